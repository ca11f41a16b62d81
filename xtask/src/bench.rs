//! Owns `cargo xtask bench`: the published-port scale benchmark, then the side-by-side
//! comparison with the Linux paths (`bench/compare.rs`; `--only scale|compare` runs one part).
//! In namespaces it creates and removes, the scale part measures how long netpath takes to
//! install N published ports (one batch, and one at a time), whether a new TCP connection to
//! the N-th mapping costs what one to the first does, and what memory publishing takes.
//!
//! The scale part also runs Docker's iptables layout at the same N (`bench/scale_iptables.rs`)
//! and the 500-UDP-port memory comparison against a proxy per port (`bench/memory.rs`).
//!
//! What the results mean, and what was tried to improve them: docs/performance.md.
mod chart;
mod compare;
mod docker_rules;
mod lab;
mod load;
mod memory;
mod paths;
mod prog_cost;
mod report;
mod scale_iptables;
mod steal;
mod traffic;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{TAG, Workspace, build, cmd};
use lab::{
    ENDPOINT, HOST_UPLINK_IP, INTERRUPTED, LAN_IPS, Lab, Stdout, check_interrupt, replay_line,
};
use report::{Machine, Results, Row, Setup, Summary, Verdict};
use traffic::{AcceptServer, ConnectRun, Serve as _};

/// The server thread's CPU; the client's is [`CLIENT_CPU`] (issue 6: one CPU each).
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// The endpoint's port every mapping leads to.
const SERVER_PORT: u16 = 80;
/// The first host port when N fits below it: 20000..29999 for 10,000 mappings stays below the
/// default `nat-port-range` (32768-60999), so published ports never meet masquerade's ports.
const FIRST_HOST_PORT: u16 = 20000;
/// How long each warm-up connect loop runs before the measured ones.
const WARM_UP: Duration = Duration::from_millis(300);
/// Targets of issue 5/6.
const BATCH_TARGET_SECONDS: f64 = 1.0;
const RATE_TOLERANCE: f64 = 0.10;

/// What the command line asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub quick: bool,
    pub scale: Option<u32>,
    pub repeats: Option<usize>,
    /// Run only this part (`--only`); both when `None`, the scale part first.
    pub only: Option<Part>,
}

/// The parts of `cargo xtask bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The published-port scale benchmark (this file).
    Scale,
    /// The side-by-side comparison with the Linux paths (compare.rs).
    Compare,
}

/// The sizes of one run, from [`Options`].
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// N: mappings in the batch.
    mappings: u32,
    first_port: u16,
    repeats: usize,
    /// K: mappings published one at a time per sample.
    singles: u32,
    connect: Duration,
}

impl Plan {
    fn new(opts: Options) -> anyhow::Result<Self> {
        let mappings = opts.scale.unwrap_or(if opts.quick { 2000 } else { 10_000 });
        if !(1..=65535).contains(&mappings) {
            bail!("--scale {mappings}: a host has 65,535 ports; give 1 to 65535");
        }
        let first_port = if u32::from(FIRST_HOST_PORT) + mappings <= 65536 {
            FIRST_HOST_PORT
        } else {
            // Only for N > 45,536: the top N ports, 65536 - N .. 65535.
            u16::try_from(65536 - mappings).context("first host port out of range")?
        };
        Ok(Self {
            quick: opts.quick,
            mappings,
            first_port,
            repeats: opts
                .repeats
                .unwrap_or(if opts.quick { 3 } else { 5 })
                .max(1),
            singles: (if opts.quick { 50 } else { 200 }).min(mappings),
            connect: Duration::from_secs(if opts.quick { 1 } else { 3 }),
        })
    }

    fn last_port(&self) -> u16 {
        // Plan::new keeps first_port + mappings - 1 <= 65535.
        (u32::from(self.first_port) + self.mappings - 1) as u16
    }

    fn command_line(&self, opts: Options) -> String {
        let mut line = String::from("cargo xtask bench");
        if opts.only == Some(Part::Scale) {
            line.push_str(" --only scale");
        }
        if self.quick {
            line.push_str(" --quick");
        }
        if let Some(n) = opts.scale {
            line.push_str(&format!(" --scale {n}"));
        }
        if let Some(r) = opts.repeats {
            line.push_str(&format!(" --repeats {r}"));
        }
        line
    }

    /// The file name stem under `target/bench/`: a quick run does not overwrite a full one.
    fn stem(&self) -> &'static str {
        if self.quick { "scale-quick" } else { "scale" }
    }
}

/// Mapping files for `publish -f`/`unpublish -f`, written under `target/bench/`.
struct MappingFiles {
    /// All N.
    all: PathBuf,
    /// The first K (published one at a time, removed as a batch).
    first: PathBuf,
    /// All but the last K (the table the last K are published onto).
    all_but_last: PathBuf,
    /// The last K.
    last: PathBuf,
}

impl MappingFiles {
    fn write(dir: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let (p0, n, k) = (u32::from(plan.first_port), plan.mappings, plan.singles);
        let file = |name: &str, ports: std::ops::Range<u32>| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            let mut text = format!(
                "# cargo xtask bench: host ports {}..{} -> {ENDPOINT}:{SERVER_PORT}\n",
                ports.start,
                ports.end.saturating_sub(1)
            );
            for port in ports {
                text.push_str(&format!("{port}:{ENDPOINT}:{SERVER_PORT}\n"));
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        Ok(Self {
            all: file("mappings-all.txt", p0..p0 + n)?,
            first: file("mappings-first.txt", p0..p0 + k)?,
            all_but_last: file("mappings-all-but-last.txt", p0..p0 + n - k)?,
            last: file("mappings-last.txt", p0 + n - k..p0 + n)?,
        })
    }
}

/// `cargo xtask bench`: set-up and build happen in the caller; this builds netpath in release,
/// runs the benchmark, writes and prints the results, and always removes the lab.
pub fn bench(ws: &Workspace, opts: Options) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(opts)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!(
            "the benchmark pins its server to CPU {SERVER_CPU} and its client to CPU {CLIENT_CPU}, \
             but this process may use only {cpus} CPU; run it where two CPUs are available"
        );
    }
    let bin = build::build(ws, true)?;
    let compare_opts = compare::Options {
        quick: opts.quick,
        repeats: opts.repeats,
    };
    let compare_only = opts.only == Some(Part::Compare);
    if compare_only {
        return compare::compare(ws, &bin, compare_opts, true, machine(ws, cpus));
    }
    // An error in the scale part stops here: the comparison would meet the same trouble.
    let scale_code = scale(ws, opts, plan, &bin, cpus)?;
    if opts.only == Some(Part::Scale) || lab::INTERRUPTED.load(Ordering::SeqCst) {
        return Ok(scale_code);
    }
    let compare_code = compare::compare(ws, &bin, compare_opts, false, machine(ws, cpus))?;
    Ok(if scale_code == ExitCode::SUCCESS {
        compare_code
    } else {
        scale_code
    })
}

/// The published-port scale part: runs it against `bin`, writes and prints the results, and
/// always removes the lab.
fn scale(
    ws: &Workspace,
    opts: Options,
    plan: Plan,
    bin: &Path,
    cpus: usize,
) -> anyhow::Result<ExitCode> {
    let out_dir = ws.target_dir()?.join("bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let files = MappingFiles::write(&out_dir, &plan)?;
    let machine = machine(ws, cpus);
    let setup = Setup {
        mode: if plan.quick { "quick" } else { "default" },
        mappings: plan.mappings,
        first_host_port: plan.first_port,
        repeats: plan.repeats,
        singles: plan.singles,
        connect_seconds: plan.connect.as_secs_f64(),
        command: plan.command_line(opts),
    };
    println!(
        "\nnetpath published-port scale benchmark: N = {} mappings (host ports {}-{} -> {ENDPOINT}:{SERVER_PORT}), \
         {} repeats, release binary {}",
        plan.mappings,
        plan.first_port,
        plan.last_port(),
        plan.repeats,
        bin.display()
    );
    println!("\n# The lab: a host namespace running netpath, a LAN client namespace, one endpoint");

    lab::catch_signals();
    let outcome = Lab::create(bin).map(|lab| {
        let measured = measure(&lab, &plan, &files);
        (lab, measured)
    });
    let (mut lab, measured) = match outcome {
        Ok(pair) => pair,
        Err(e) => {
            // Lab::create removed what it had made before returning the error.
            eprintln!("\n{TAG}: error: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(e) = &measured {
        eprintln!("\n{TAG}: error: {e:#}");
        println!("{TAG}: the benchmark stopped; cleaning up");
    }
    println!("\n# Clean-up: netpath purge --force, the namespaces deleted");
    let clean = lab.teardown();
    let (mut rows, mut facts) = match measured {
        Ok(found) => found,
        Err(_) => return Ok(ExitCode::FAILURE),
    };
    if !clean {
        bail!("the benchmark ran, but clean-up left something behind (see the messages above)");
    }
    // Docker's iptables path and the 500-UDP-port memory part, each in fresh namespaces.
    let more = scale_iptables::measure(&plan).and_then(|(r, f)| {
        rows.extend(r);
        facts.extend(f);
        memory::measure(bin, &out_dir)
    });
    let memory = match more {
        Ok(found) => found,
        Err(e) => {
            eprintln!("\n{TAG}: error: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    rows.extend(memory.rows);
    facts.extend(memory.facts);

    let mut verdicts = verdicts(&plan, &rows, &facts);
    verdicts.extend(memory.verdicts);
    let results = Results {
        machine,
        setup,
        rows,
        facts,
        verdicts,
    };
    let md_path = out_dir.join(format!("{}.md", plan.stem()));
    let json_path = out_dir.join(format!("{}.json", plan.stem()));
    let markdown = results.markdown();
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(&results.json()).context("cannot render the JSON")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("\n{markdown}");
    println!(
        "{TAG}: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

type Facts = Vec<(&'static str, String, serde_json::Value)>;

/// Runs the four measurements against a lab whose endpoint exists and whose port table is empty.
fn measure(lab: &Lab, plan: &Plan, files: &MappingFiles) -> anyhow::Result<(Vec<Row>, Facts)> {
    let mut rows = Vec::new();
    let mut facts = Facts::new();
    let (n, k) = (plan.mappings, plan.singles);
    let path = |p: &Path| p.display().to_string();
    let (all, first, all_but_last, last) = (
        path(&files.all),
        path(&files.first),
        path(&files.all_but_last),
        path(&files.last),
    );

    section(&format!(
        "1. {n} mappings with one `publish -f`, then one `unpublish -f` ({} times)",
        plan.repeats
    ));
    println!("$ {}", replay_line(&["publish", "-f", &all]));
    println!("$ {}", replay_line(&["unpublish", "-f", &all]));
    let (mut publish_s, mut unpublish_s, mut rss_mib) = (vec![], vec![], vec![]);
    let mut left_running = 0;
    for repeat in 1..=plan.repeats {
        let published = lab.netpath(&["publish", "-f", &all], Stdout::Discard)?;
        left_running = left_running.max(lab::netpath_processes(lab.bin())?);
        if repeat == 1 {
            let listed = count_published(lab)?;
            if listed != n as usize {
                bail!(
                    "`publish -f` of {n} mappings returned, but `netpath port {ENDPOINT}` lists {listed}"
                );
            }
            facts.push((
                "mappings_listed",
                format!("mappings `netpath port {ENDPOINT}` listed after the batch"),
                json!(listed),
            ));
        }
        let unpublished = lab.netpath(&["unpublish", "-f", &all], Stdout::Discard)?;
        println!(
            "  run {repeat}: publish -f {:.3} s (peak RSS {:.1} MiB), unpublish -f {:.3} s",
            published.wall.as_secs_f64(),
            kib_to_mib(published.max_rss_kib),
            unpublished.wall.as_secs_f64()
        );
        publish_s.push(published.wall.as_secs_f64());
        unpublish_s.push(unpublished.wall.as_secs_f64());
        rss_mib.push(kib_to_mib(published.max_rss_kib));
    }
    rows.push(row(
        "batch_publish_s",
        format!("`publish -f`: {n} mappings in one batch"),
        "s",
        &publish_s,
        "wall time of the whole command",
    )?);
    rows.push(row(
        "batch_unpublish_s",
        format!("`unpublish -f`: {n} mappings in one batch"),
        "s",
        &unpublish_s,
        "wall time of the whole command",
    )?);
    rows.push(row(
        "batch_publish_peak_rss_mib",
        format!("peak RSS of the `publish -f` process ({n} mappings)"),
        "MiB",
        &rss_mib,
        "VmHWM (ru_maxrss); netpath exits when done",
    )?);
    facts.push((
        "processes_left_running",
        "netpath processes left running after publishing".into(),
        json!(left_running),
    ));

    section(&format!(
        "2. `publish` one mapping at a time: the first {k}, and the last {k} of {n} ({} times each)",
        plan.repeats
    ));
    println!(
        "$ {}    # ports {}..{}, one command each",
        replay_line(&["publish", &format!("PORT:{ENDPOINT}:{SERVER_PORT}")]),
        plan.first_port,
        u32::from(plan.first_port) + k - 1
    );
    let first_ms = singles(lab, plan, u32::from(plan.first_port), &first)?;
    let first_summary = Summary::of(&first_ms).context("no one-at-a-time samples")?;
    rows.push(row(
        "single_publish_first_ms",
        format!("`publish` one at a time, first {k} (empty table): per mapping"),
        "ms",
        &first_ms,
        "wall time of one command",
    )?);
    rows.push(Row {
        key: "single_publish_extrapolated_s",
        label: format!("`publish` one at a time: {n} mappings"),
        unit: "s",
        summary: first_summary.scaled(f64::from(n) / 1000.0),
        note: format!("extrapolated: {n} x the first {k}'s time per mapping, not measured"),
    });
    if n > k {
        println!(
            "$ {}    # then ports {}..{} one command each",
            replay_line(&["publish", "-f", &all_but_last]),
            u32::from(plan.first_port) + n - k,
            plan.last_port()
        );
        lab.netpath(&["publish", "-f", &all_but_last], Stdout::Discard)?;
        let last_ms = singles(lab, plan, u32::from(plan.first_port) + n - k, &last)?;
        rows.push(row(
            "single_publish_last_ms",
            format!(
                "`publish` one at a time, last {k} ({} already published): per mapping",
                n - k
            ),
            "ms",
            &last_ms,
            "wall time of one command",
        )?);
        let linear: Vec<f64> = first_ms
            .iter()
            .zip(&last_ms)
            .map(|(a, b)| (a + b) / 2.0 * f64::from(n) / 1000.0)
            .collect();
        rows.push(row(
            "single_publish_linear_extrapolated_s",
            format!("`publish` one at a time: {n} mappings, from first and last {k}"),
            "s",
            &linear,
            &format!(
                "extrapolated: {n} x the mean of first and last per-mapping time \
                 (cost assumed linear in the table size), not measured"
            ),
        )?);
        // Back to all N published, for the connection test.
        lab.netpath(&["publish", "-f", &last], Stdout::Discard)?;
    } else {
        lab.netpath(&["publish", "-f", &all], Stdout::Discard)?;
    }

    let (rates, conn_facts) = connection_rates(lab, plan)?;
    rows.push(row(
        "conn_per_s_first",
        format!(
            "new TCP connections/s to the first mapping (:{})",
            plan.first_port
        ),
        "conn/s",
        &rates.first,
        "connect + close (RST), one client thread",
    )?);
    rows.push(row(
        "conn_per_s_last",
        format!(
            "new TCP connections/s to the last mapping (:{}, the {n}th)",
            plan.last_port()
        ),
        "conn/s",
        &rates.last,
        "connect + close (RST), one client thread",
    )?);
    rows.push(row(
        "conn_per_s_last_over_first",
        "last / first, per back-to-back pair".into(),
        "ratio",
        &rates.ratios,
        "spread only; the verdict compares the two medians",
    )?);
    facts.extend(conn_facts);
    lab.netpath(&["unpublish", "-f", &all], Stdout::Discard)?;
    Ok((rows, facts))
}

/// Publishes `plan.singles` mappings one command each, from host port `start`, `repeats` times
/// (removing them with `unpublish -f undo` after each); returns each repeat's mean ms per mapping.
fn singles(lab: &Lab, plan: &Plan, start: u32, undo: &str) -> anyhow::Result<Vec<f64>> {
    let mut per_mapping_ms = Vec::new();
    for repeat in 1..=plan.repeats {
        let mut total = Duration::ZERO;
        for port in start..start + plan.singles {
            let mapping = format!("{port}:{ENDPOINT}:{SERVER_PORT}");
            total += lab.netpath(&["publish", &mapping], Stdout::Discard)?.wall;
        }
        lab.netpath(&["unpublish", "-f", undo], Stdout::Discard)?;
        let ms = total.as_secs_f64() * 1000.0 / f64::from(plan.singles);
        println!(
            "  run {repeat}: {} commands in {:.2} s: {ms:.2} ms per mapping",
            plan.singles,
            total.as_secs_f64()
        );
        per_mapping_ms.push(ms);
    }
    Ok(per_mapping_ms)
}

/// The connection rates of the measured runs, in back-to-back pairs.
#[derive(Debug, Default)]
struct RateSamples {
    /// conn/s to the first mapping, one per pair.
    first: Vec<f64>,
    /// conn/s to the last mapping, one per pair.
    last: Vec<f64>,
    /// last / first of each pair.
    ratios: Vec<f64>,
    /// Connections the client completed, all measured runs.
    connected: u64,
    /// Connects that failed or timed out, all measured runs.
    failed: u64,
    first_error: Option<String>,
    /// Connections the server had accepted before the measured runs (the warm-up's).
    accepted_before: u64,
}

impl RateSamples {
    /// What the figures cannot show: failures, and whether the server saw what the client did
    /// and kept up.
    fn facts(&self, accepted: u64, listen_drops: u64) -> Facts {
        let failures = match &self.first_error {
            Some(e) => json!({ "count": self.failed, "first_error": e }),
            None => json!({ "count": self.failed }),
        };
        vec![
            (
                "measured_connections",
                "connections the client completed / the server accepted (measured runs)".into(),
                json!({ "client_completed": self.connected, "server_accepted": accepted }),
            ),
            (
                "failed_connects",
                "connects that failed or took over 0.2 s (measured runs)".into(),
                failures,
            ),
            (
                "server_listen_drops",
                "handshakes the server's full accept queue dropped (TcpExt ListenDrops, \
                 warm-up included)"
                    .into(),
                json!(listen_drops),
            ),
        ]
    }
}

/// Connection rates to the first and the last mapping, measured in back-to-back pairs whose
/// order alternates (so drift or warm-up favours neither), after one warm-up loop each.
fn connection_rates(lab: &Lab, plan: &Plan) -> anyhow::Result<(RateSamples, Facts)> {
    let first = SocketAddrV4::new(HOST_UPLINK_IP, plan.first_port);
    let last = SocketAddrV4::new(HOST_UPLINK_IP, plan.last_port());
    section(&format!(
        "3. New TCP connections/s from the LAN client to {first} and {last} ({} s each, {} times; \
         server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU})",
        plan.connect.as_secs_f64(),
        plan.repeats
    ));
    println!(
        "# an accept-and-close server on 0.0.0.0:{SERVER_PORT} in {}, a connect-and-close loop \
         (SO_LINGER 0) in {}, from {} to the first mapping and from {} to the last",
        lab.endpoint_ns().display(),
        lab.lan_ns().display(),
        LAN_IPS[0],
        LAN_IPS[1]
    );
    let server = AcceptServer::bind(
        &lab.endpoint_ns(),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT),
    )
    .with_context(|| format!("cannot start the server in {}", lab.endpoint_ns().display()))?;
    let lan = lab.lan_ns();
    // One client address per mapping: see lab::LAN_IPS.
    let source = |dial: SocketAddrV4| LAN_IPS[usize::from(dial == last)];
    let run = |dial: SocketAddrV4, duration: Duration| -> anyhow::Result<ConnectRun> {
        let run =
            traffic::connect_loop(&lan, CLIENT_CPU, source(dial), dial, duration, &INTERRUPTED)
                .with_context(|| format!("the client loop to {dial} failed"))?;
        check_interrupt()?;
        if run.connected == 0 {
            bail!(
                "no connection to {dial} got through ({}): the published port does not reach \
                 the server",
                run.first_error.as_deref().unwrap_or("no error either")
            );
        }
        Ok(run)
    };
    let pairs = || -> anyhow::Result<RateSamples> {
        for dial in [first, last] {
            run(dial, WARM_UP)?;
        }
        let mut samples = RateSamples {
            accepted_before: server.accepted.load(Ordering::Relaxed),
            ..RateSamples::default()
        };
        let pairs = alternating_pairs(first, last, plan, &run, |r| {
            samples.connected += r.connected;
            samples.failed += r.failed;
            if samples.first_error.is_none() {
                samples.first_error = r.first_error.clone();
            }
        })?;
        for [first, last] in pairs {
            samples.first.push(first);
            samples.last.push(last);
            samples.ratios.push(last / first);
        }
        Ok(samples)
    };
    let drops_before = traffic::listen_drops(&lab.endpoint_ns())
        .context("cannot read the endpoint's TCP counters")?;
    let samples = while_serving(&server, pairs)?;
    let accepted = server.accepted.load(Ordering::Relaxed) - samples.accepted_before;
    let drops = traffic::listen_drops(&lab.endpoint_ns())
        .context("cannot read the endpoint's TCP counters")?
        .saturating_sub(drops_before);
    let facts = samples.facts(accepted, drops);
    Ok((samples, facts))
}

/// Runs `measure` while `server` accepts and closes on the server CPU in a thread of its own,
/// then stops the server; fails if `measure` failed, else if the server did.
fn while_serving<T>(
    server: &AcceptServer,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        let serving = s.spawn(|| server.serve(SERVER_CPU, &INTERRUPTED));
        let measured = measure();
        server.stop();
        let served = serving
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let measured = measured?;
        served.context("the accept-and-close server failed")?;
        Ok(measured)
    })
}

/// `plan.repeats` back-to-back pairs of `plan.connect`-long connect loops to `first` and
/// `last`, the order alternating (so drift or warm-up favours neither); `run` runs one loop and
/// `each` sees every loop it ran. Prints each pair; returns each pair's conn/s, `[first, last]`.
fn alternating_pairs(
    first: SocketAddrV4,
    last: SocketAddrV4,
    plan: &Plan,
    mut run: impl FnMut(SocketAddrV4, Duration) -> anyhow::Result<ConnectRun>,
    mut each: impl FnMut(&ConnectRun),
) -> anyhow::Result<Vec<[f64; 2]>> {
    let mut pairs = Vec::new();
    for repeat in 1..=plan.repeats {
        let order = if repeat % 2 == 1 {
            [first, last]
        } else {
            [last, first]
        };
        let mut pair = [0.0; 2];
        for dial in order {
            let r = run(dial, plan.connect)?;
            each(&r);
            pair[usize::from(dial == last)] = r.per_second();
        }
        println!(
            "  run {repeat}: first {:.0} conn/s, last {:.0} conn/s, last/first {:.3}",
            pair[0],
            pair[1],
            pair[1] / pair[0]
        );
        pairs.push(pair);
    }
    Ok(pairs)
}

/// How many mappings `netpath port web` lists.
fn count_published(lab: &Lab) -> anyhow::Result<usize> {
    let out = lab.netpath(&["port", ENDPOINT], Stdout::Keep)?;
    Ok(out.stdout.lines().filter(|l| l.contains("->")).count())
}

fn row(
    key: &'static str,
    label: String,
    unit: &'static str,
    samples: &[f64],
    note: &str,
) -> anyhow::Result<Row> {
    Ok(Row {
        key,
        label,
        unit,
        summary: Summary::of(samples).with_context(|| format!("no samples for {key}"))?,
        note: note.to_string(),
    })
}

fn verdicts(plan: &Plan, rows: &[Row], facts: &Facts) -> Vec<Verdict> {
    let find = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.summary);
    let mut out = Vec::new();
    if let Some(s) = find("batch_publish_s") {
        let scale_note = if plan.mappings == 10_000 {
            String::new()
        } else {
            format!(
                " (the issue's target is for 10,000; this run used {})",
                plan.mappings
            )
        };
        out.push(Verdict {
            key: "batch_publish_under_1s",
            target: format!(
                "{} mappings installed by one `netpath publish -f` in < {BATCH_TARGET_SECONDS} s{scale_note}",
                plan.mappings
            ),
            measured: format!("median {:.3} s, max {:.3} s", s.median, s.max),
            met: s.median < BATCH_TARGET_SECONDS,
        });
    }
    if let (Some(first), Some(last), Some(pairs)) = (
        find("conn_per_s_first"),
        find("conn_per_s_last"),
        find("conn_per_s_last_over_first"),
    ) {
        // The ratio of the medians: each median already sets aside one noisy run, which a
        // single pair's ratio cannot.
        let ratio = last.median / first.median;
        out.push(Verdict {
            key: "conn_rate_last_within_10pct_of_first",
            target: format!(
                "new connections/s to mapping {} within {:.0}% of mapping 1",
                plan.mappings,
                RATE_TOLERANCE * 100.0
            ),
            measured: format!(
                "median last / median first = {ratio:.3}; per back-to-back pair {:.3} to {:.3}",
                pairs.min, pairs.max
            ),
            met: (ratio - 1.0).abs() <= RATE_TOLERANCE,
        });
    }
    if let Some((_, _, failed)) = facts.iter().find(|(k, _, _)| *k == "failed_connects")
        && let Some(count) = failed["count"].as_u64().filter(|&c| c > 0)
    {
        // Not a target, but it explains an outlier: say it next to the verdicts.
        out.push(Verdict {
            key: "connects_all_succeeded",
            target: "every measured connect succeeded (a failure costs its loop 0.2 s; see \
                     server_listen_drops for the server's own drops)"
                .into(),
            measured: format!("{count} failed"),
            met: false,
        });
    }
    if let Some((_, _, left)) = facts
        .iter()
        .find(|(k, _, _)| *k == "processes_left_running")
    {
        out.push(Verdict {
            key: "no_process_left_running",
            target: "no netpath process left running after publishing (no proxies, no daemon)"
                .into(),
            measured: format!("{left} processes"),
            met: left.as_u64() == Some(0),
        });
    }
    out
}

fn section(title: &str) {
    println!("\n# {title}");
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where the figures come from. Missing pieces read "unknown" rather than failing the run.
fn machine(ws: &Workspace, cpus: usize) -> Machine {
    let first_line = |cmd: &mut std::process::Command| {
        cmd::run_captured(cmd)
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let date = first_line(&mut cmd::command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .unwrap_or_else(|| "unknown".into());
    let root = ws.root.display().to_string();
    let netpath_version = first_line(&mut cmd::command(
        "git",
        &["-C", &root, "describe", "--always", "--dirty"],
    ))
    .unwrap_or_else(|| "unknown".into());
    Machine {
        date,
        kernel,
        cpu_model,
        cpus,
        netpath_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(quick: bool, scale: Option<u32>) -> Options {
        Options {
            quick,
            scale,
            repeats: None,
            only: None,
        }
    }

    #[test]
    fn plan_sizes_follow_the_mode() {
        let p = Plan::new(opts(false, None)).expect("default plan");
        assert_eq!((p.mappings, p.repeats, p.singles), (10_000, 5, 200));
        assert_eq!((p.first_port, p.last_port()), (20000, 29999));
        let q = Plan::new(opts(true, None)).expect("quick plan");
        assert_eq!((q.mappings, q.repeats, q.singles), (2000, 3, 50));
        assert_eq!(q.connect, Duration::from_secs(1));
        assert_eq!(q.stem(), "scale-quick");
    }

    #[test]
    fn plan_fits_large_and_small_scales_into_the_port_space() {
        let p = Plan::new(opts(false, Some(65535))).expect("largest plan");
        assert_eq!((p.first_port, p.last_port()), (1, 65535));
        let p = Plan::new(opts(false, Some(45536))).expect("plan");
        assert_eq!((p.first_port, p.last_port()), (20000, 65535));
        let p = Plan::new(opts(true, Some(10))).expect("tiny plan");
        assert_eq!(p.singles, 10);
        assert!(Plan::new(opts(false, Some(0))).is_err());
        assert!(Plan::new(opts(false, Some(70000))).is_err());
    }

    fn rate_rows(first: f64, last: f64) -> Vec<Row> {
        let row = |key, value: f64| Row {
            key,
            label: String::new(),
            unit: "conn/s",
            summary: Summary::of(&[value]).expect("one sample"),
            note: String::new(),
        };
        vec![
            row("conn_per_s_first", first),
            row("conn_per_s_last", last),
            row("conn_per_s_last_over_first", last / first),
        ]
    }

    #[test]
    fn verdicts_compare_the_medians_and_name_failures() {
        let plan = Plan::new(opts(false, None)).expect("plan");
        let ok = verdicts(&plan, &rate_rows(100.0, 91.0), &Facts::new());
        assert_eq!(ok.len(), 1);
        assert!(ok[0].met, "{}", ok[0].line());
        let slow = verdicts(&plan, &rate_rows(100.0, 89.0), &Facts::new());
        assert!(!slow[0].met, "{}", slow[0].line());
        let fast = verdicts(&plan, &rate_rows(100.0, 111.0), &Facts::new());
        assert!(!fast[0].met, "{}", fast[0].line());
        let facts = vec![
            ("processes_left_running", String::new(), json!(1)),
            ("failed_connects", String::new(), json!({ "count": 2 })),
        ];
        let v = verdicts(&plan, &[], &facts);
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| !v.met), "{v:?}");
        let failed = v
            .iter()
            .find(|v| v.key == "connects_all_succeeded")
            .expect("a verdict on failed connects");
        assert!(failed.line().contains("2 failed"), "{}", failed.line());
    }

    #[test]
    fn mapping_files_hold_the_planned_ports() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let plan = Plan::new(opts(true, Some(100))).expect("plan");
        let files = MappingFiles::write(&dir, &plan).expect("files");
        let lines = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .expect("read back")
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        let all = lines(&files.all);
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], "20000:web:80");
        assert_eq!(all[99], "20099:web:80");
        assert_eq!(lines(&files.first).len(), 50);
        assert_eq!(lines(&files.last)[0], "20050:web:80");
        assert_eq!(
            lines(&files.all_but_last).last().map(String::as_str),
            Some("20049:web:80")
        );
        std::fs::remove_dir_all(&dir).expect("clean temp dir");
    }
}
