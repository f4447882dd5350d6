//! Times `Router::route` on the filter benchmark's config and request, natively.
//! `cargo run --release -p router-core --example route_timing --features yaml`

use std::time::Instant;

use router_core::config::UserConfig;
use router_core::{Capabilities, Router};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topics = [
        ("math", "integral, derivative, equation, algebra, theorem"),
        ("code", "python, rust, compile, function, debug"),
        ("physics", "quantum, velocity, momentum, relativity, photon"),
        (
            "chemistry",
            "molecule, reaction, catalyst, oxidation, isotope",
        ),
        ("biology", "cell, protein, enzyme, genome, mitosis"),
        ("law", "contract, statute, plaintiff, liability, tort"),
        ("finance", "stock, bond, dividend, portfolio, inflation"),
        ("history", "empire, dynasty, revolution, medieval, treaty"),
        ("health", "symptom, diagnosis, vaccine, therapy, dosage"),
        ("urgent", "urgent, asap, immediately, emergency, critical"),
    ];
    let mut y = String::from("signals:\n  keywords:\n");
    for (n, k) in &topics {
        y += &format!("    - {{name: {n}, operator: OR, keywords: [{k}]}}\n");
    }
    y += "decisions:\n";
    for (i, (n, _)) in topics.iter().enumerate() {
        y += &format!("  - {{name: {n}_route, priority: {i}, rules: {{operator: OR, conditions: [{{type: keyword, name: {n}}}]}}, modelRefs: [{{model: a, use_reasoning: true}}], plugins: [{{type: system_prompt, configuration: {{system_prompt: \"You are an expert.\"}}}}]}}\n");
    }
    y += "providers:\n  models:\n    - {name: a, reasoning_family: q, endpoints: [{endpoint: \"127.0.0.1:1\"}]}\n  reasoning_families: {q: {type: chat_template_kwargs, parameter: enable_thinking}}\n";
    let cfg = UserConfig::from_yaml("bench", &y)?;
    let router = Router::new(&cfg, &|_| None, Capabilities::default())
        .map_err(|e| format!("invalid bench config: {e:?}"))?;
    let body = br#"{"model":"MoM","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Can you explain how to solve this quadratic equation step by step and check the roots against the original equation please?"}],"temperature":0.2,"max_tokens":64}"#;
    let route = |body: &[u8]| match router.route(body.to_vec(), 0) {
        router_core::router::Step::Route(plan) => Ok(plan),
        other => Err(format!("bench config should route directly, got {other:?}")),
    };
    for _ in 0..1000 {
        route(body)?;
    }
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(route(std::hint::black_box(body))?);
    }
    println!(
        "route: {:.2} µs/request",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}
