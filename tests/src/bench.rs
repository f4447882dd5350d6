//! Load generation and statistics shared by the benchmarks in `src/bin/`: keep-alive
//! HTTP/1.1 clients, one thread each, that measure every round trip; per-process CPU
//! from `/proc`; percentiles; and the Envoy bootstrap edit that adds a listener without
//! the wasm filter (the baseline every benchmark compares against in the same run).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Builds the request bytes for one round trip (called once per request, outside the
/// timed part, so a generator may make every request different).
pub type RequestSource = dyn Fn() -> Vec<u8> + Send + Sync;

/// A `POST path` with a JSON body, as the clients send it.
pub fn post_json(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a round trip returned: the status and the watched headers (lower-case names).
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    /// Sends `request` and reads the whole response; keeps the headers named in `watch`.
    pub fn roundtrip(&mut self, request: &[u8], watch: &[&str]) -> Result<Answer> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("bad status line")?
            .parse()?;
        let (mut length, mut chunked) = (0usize, false);
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((name, value)) = l.split_once(':') else {
                bail!("bad header line {l:?}");
            };
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "content-length" {
                length = value.parse()?;
            } else if name == "transfer-encoding" && value.contains("chunked") {
                chunked = true;
            } else if watch.contains(&name.as_str()) {
                headers.push((name, value.to_string()));
            }
        }
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)?;
                let mut buf = vec![0; size + 2];
                self.reader.read_exact(&mut buf)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut buf = vec![0; length];
            self.reader.read_exact(&mut buf)?;
        }
        Ok(Answer { status, headers })
    }
}

/// What one side did in one round.
#[derive(Default)]
pub struct Sample {
    pub latencies_us: Vec<u64>,
    pub seconds: f64,
    /// CPU seconds each watched process spent during the sample.
    pub cpu: Vec<f64>,
    /// Responses by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Responses by watched header, as `name: value`.
    pub headers: BTreeMap<String, usize>,
}

/// User + system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("no utime")?.parse::<f64>()?
        + fields.get(12).context("no stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// The process holding the socket that listens on 127.0.0.1:`port` (from `/proc/net/tcp`
/// and the processes' descriptors), e.g. Envoy behind its Python launcher and watchdog.
pub fn pid_listening_on(port: u16) -> Result<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let want = format!(":{port:04X}");
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local_address, state (0A = LISTEN), inode
        .find(|f| f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A")
        .map(|f| f[9].to_string())
        .with_context(|| format!("nothing listens on port {port}"))?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Ok(pid);
            }
        }
    }
    bail!("no process holds the socket listening on port {port}")
}

/// `clients` threads, each on its own connection to `port`, sending `request()` in a
/// loop for `seconds`; `pids` are the processes whose CPU time is measured.
pub fn load(
    port: u16,
    clients: usize,
    seconds: f64,
    request: &RequestSource,
    pids: &[u32],
    watch: &[&str],
) -> Result<Sample> {
    let cpu_before = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let per_client = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || -> Result<Vec<(u64, Answer)>> {
                    let mut conn = Conn::connect(port)?;
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let bytes = request();
                        let t = Instant::now();
                        let answer = conn.roundtrip(&bytes, watch)?;
                        out.push((t.elapsed().as_micros() as u64, answer));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut sample = Sample {
        seconds: start.elapsed().as_secs_f64(),
        ..Sample::default()
    };
    for (p, before) in pids.iter().zip(cpu_before) {
        sample.cpu.push(cpu_seconds(*p)? - before);
    }
    for (us, answer) in per_client.into_iter().flatten() {
        sample.latencies_us.push(us);
        *sample.statuses.entry(answer.status).or_default() += 1;
        for (n, v) in answer.headers {
            *sample.headers.entry(format!("{n}: {v}")).or_default() += 1;
        }
    }
    Ok(sample)
}

/// Fails unless every response of `samples` was a 200.
pub fn all_ok(samples: &[Sample], side: &str) -> Result<()> {
    for s in samples {
        if let Some((status, n)) = s.statuses.iter().find(|(st, _)| **st != 200) {
            bail!("{side}: {n} responses with status {status}");
        }
    }
    Ok(())
}

/// The `p` quantile (0..=1) of sorted microseconds, in milliseconds.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Several rounds of one side, pooled.
pub struct Summary {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rps: f64,
    /// CPU µs per request of each watched process.
    pub cpu_us_per_request: Vec<f64>,
    pub statuses: BTreeMap<u16, usize>,
    pub headers: BTreeMap<String, usize>,
}

impl Summary {
    /// Responses that carried the watched header `name: value`.
    pub fn count(&self, header: &str) -> usize {
        self.headers.get(header).copied().unwrap_or(0)
    }
}

pub fn summarise(samples: &[Sample]) -> Summary {
    let mut all: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let secs: f64 = samples.iter().map(|s| s.seconds).sum();
    let n = all.len().max(1) as f64;
    let procs = samples.iter().map(|s| s.cpu.len()).max().unwrap_or(0);
    let cpu_us_per_request = (0..procs)
        .map(|i| samples.iter().filter_map(|s| s.cpu.get(i)).sum::<f64>() * 1e6 / n)
        .collect();
    let (mut statuses, mut headers) = (BTreeMap::new(), BTreeMap::new());
    for s in samples {
        for (k, v) in &s.statuses {
            *statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &s.headers {
            *headers.entry(k.clone()).or_default() += v;
        }
    }
    Summary {
        requests: all.len(),
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
        rps: all.len() as f64 / secs,
        cpu_us_per_request,
        statuses,
        headers,
    }
}

/// Adds a copy of the bootstrap's first listener on `port`, named `baseline`, without the
/// wasm filter: the same routes and upstreams, Envoy alone.
pub fn with_baseline_listener(bootstrap: &str, port: u16) -> Result<String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(bootstrap)?;
    let listeners = doc
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
        .and_then(|l| l.as_sequence_mut())
        .context("bootstrap has no static_resources.listeners")?;
    let mut copy = listeners.first().cloned().context("no listener")?;
    copy["name"] = "baseline".into();
    copy["address"]["socket_address"]["port_value"] = port.into();
    let chains = copy["filter_chains"]
        .as_sequence_mut()
        .context("listener has no filter_chains")?;
    for chain in chains {
        for f in chain["filters"].as_sequence_mut().into_iter().flatten() {
            if let Some(http) = f["typed_config"]["http_filters"].as_sequence_mut() {
                http.retain(|h| h["name"].as_str() != Some("envoy.filters.http.wasm"));
            }
        }
    }
    listeners.push(copy);
    Ok(serde_yaml::to_string(&doc)?)
}

/// `--name value` command-line options.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    pub fn num(&self, name: &str, default: f64) -> Result<f64> {
        match self.value(name) {
            Some(v) => v
                .parse()
                .with_context(|| format!("{name} {v}: not a number")),
            None => Ok(default),
        }
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.value(name).unwrap_or(default).to_string()
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}
