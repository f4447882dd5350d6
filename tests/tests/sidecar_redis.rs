//! The Redis cache backend through two complete routers (Envoy + filter + their own
//! sidecar process) sharing one real `redis-server`: an answer stored through one is a hit
//! through the other; Redis down → requests are served uncached.

use vsr_e2e::{Redis, Sidecar, Stack};

#[test]
fn two_routers_share_the_redis_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let flags = ["--cache-backend", "redis", "--redis-url", url.as_str()];
    let config = include_str!("../configs/sidecar_redis.yaml");
    let sidecar_a = Sidecar::start(dir.path(), &flags);
    let sidecar_b = Sidecar::start(dir.path(), &flags);
    let a = Stack::start_with_sidecar(config, &[], Some(&sidecar_a.address()));
    let b = Stack::start_with_sidecar(config, &[], Some(&sidecar_b.address()));

    let q = "How many moons does Jupiter have?";
    let first = a.ask(q);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-vsr-cache-hit"), None);
    let hit = b.ask("How many moons does Jupiter have?");
    assert_eq!(hit.header("x-vsr-cache-hit"), Some("true"), "{hit:?}");
    assert_eq!(hit.json()["mock"]["request"]["messages"][0]["content"], q);

    // Redis down: served uncached, never hung.
    redis.kill();
    let r = b.ask("How many moons does Saturn have?");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-vsr-cache-hit"), None);
    let metrics = sidecar_b.metrics();
    let bypassed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("vsr_cache_lookups_total{result=\"bypass\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(bypassed >= 1.0, "no bypassed lookup counted:\n{metrics}");

    // Back: caching works again.
    redis.resume();
    let q = "What is the boiling point of water at sea level?";
    let _ = a.ask(q);
    let mut hit = None;
    // The sidecar reconnects on its own schedule; give it a few tries.
    for _ in 0..20 {
        let r = b.ask(q);
        if r.header("x-vsr-cache-hit") == Some("true") {
            hit = Some(r);
            break;
        }
        let _ = a.ask(q);
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(hit.is_some(), "no hit after Redis came back");
}
