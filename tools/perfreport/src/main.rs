//! perfreport: turns one `perf/run` result file (perf/history/*.json) into
//! perf/RESULTS.md and SVG plots under perf/plots/.
//!
//! `perfreport [--input FILE] [--out perf/RESULTS.md] [--plots perf/plots]`; without
//! `--input` the newest file in perf/history/ is used. Paths are relative to the
//! current directory (perf/run runs it from the repository root).

mod plots;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

const ENGINE_ORDER: [&str; 5] = ["tickwire", "tickwire-1w", "baseline", "ws", "nats"];

const USAGE: &str = "usage: perfreport [--input FILE] [--out FILE] [--plots DIR]";

fn main() -> Result<()> {
    let mut input: Option<PathBuf> = None;
    let mut out = PathBuf::from("perf/RESULTS.md");
    let mut plots_dir = PathBuf::from("perf/plots");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--input" => input = Some(v()?.into()),
            "--out" => out = v()?.into(),
            "--plots" => plots_dir = v()?.into(),
            "-h" | "--help" => {
                println!(
                    "{USAGE}\n\nRenders a perf/run JSON (default: the newest in perf/history) \
                     as RESULTS.md (default: perf/RESULTS.md) and its plots (default: perf/plots)."
                );
                return Ok(());
            }
            _ => bail!("{USAGE}"),
        }
    }
    let input = match input {
        Some(p) => p,
        None => newest(Path::new("perf/history"))?,
    };
    let run: Value = serde_json::from_str(
        &fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?,
    )
    .with_context(|| format!("parsing {}", input.display()))?;

    fs::create_dir_all(&plots_dir)?;
    let rel_plots = relative_to(&plots_dir, out.parent().unwrap_or(Path::new(".")));
    let figs = plots::render_all(&run, &plots_dir)?;
    let previous = previous_run(&input, &run);
    let md = render_markdown(
        &run,
        &input,
        previous.as_ref().map(|(v, n)| (v, n.as_str())),
        &rel_plots,
        &figs,
    );
    let mut md = md;
    let micro = out.with_file_name("MICROBENCH.md");
    if let Ok(text) = fs::read_to_string(&micro) {
        md.push_str(&microbench_section(&text));
    }
    for (file, title) in [
        ("DEFAULTS.md", "Defaults against the baseline"),
        ("TLS.md", "TLS against plain"),
        ("PUBLISH.md", "HTTP publish API"),
        ("HTTP_STREAMS.md", "SSE and long-polling against WebSocket"),
    ] {
        if let Ok(text) = fs::read_to_string(out.with_file_name(file)) {
            md.push_str(&kept_section(&text, file, title));
        }
    }
    fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "perfreport: wrote {} and {} plot(s) in {}",
        shown_path(&out),
        figs.len(),
        shown_path(&plots_dir)
    );
    Ok(())
}

/// The criterion table of MICROBENCH.md (kept by hand from `cargo bench`,
/// which this report does not run), so RESULTS.md holds every figure.
fn microbench_section(text: &str) -> String {
    let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    if table.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Engine microbenchmarks (criterion)\n\nCopied from [MICROBENCH.md](MICROBENCH.md) \
         (method, date and reading there); `cargo bench -p tickwire` reproduces them.\n",
    );
    md.push_str(&tables(text));
    md
}

/// Every table of `text`, a blank line before each, so they stay apart,
/// and before the first table of each section that section's headings
/// (`Section · Subsection`; the page's title is the report's section), so
/// a copied table says what it is.
fn tables(text: &str) -> String {
    let mut md = String::new();
    let mut in_table = false;
    // The headings over the current line, by level.
    let mut path: Vec<&str> = Vec::new();
    let mut labelled = String::new();
    let mut fenced = false;
    for l in text.lines() {
        // A `# ` inside a fenced block is a shell comment, not a heading.
        fenced ^= l.starts_with("```");
        let level = l.bytes().take_while(|&b| b == b'#').count();
        if !fenced && level > 1 && l.as_bytes().get(level) == Some(&b' ') {
            path.truncate(level - 2);
            path.resize(level - 2, "");
            path.push(l[level..].trim());
        }
        let row = l.starts_with('|');
        if row && !in_table {
            md.push('\n');
            let label = path
                .iter()
                .filter(|h| !h.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" · ");
            if !label.is_empty() && label != labelled {
                md.push_str(&format!("*{label}*\n\n"));
                labelled = label;
            }
        }
        if row {
            md.push_str(l);
            md.push('\n');
        }
        in_table = row;
    }
    md
}

/// The tables of a page of figures kept by hand (DEFAULTS.md: the default
/// against other settings and the baseline; TLS.md: TLS against
/// plain with the `tickwire-tls` engine; PUBLISH.md: the publish API with
/// `pubbench`; HTTP_STREAMS.md: the `tickwire-sse` and `tickwire-poll`
/// engines), so RESULTS.md holds those figures too.
fn kept_section(text: &str, file: &str, title: &str) -> String {
    let mut md = format!(
        "\n## {title}\n\nCopied from [{file}]({file}) (commands, method and reading there).\n"
    );
    md.push_str(&tables(text));
    md
}

/// A path as written in the report: relative to the current directory when possible,
/// so reports never carry machine-specific prefixes.
fn shown_path(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
        .display()
        .to_string()
}

fn newest(dir: &Path) -> Result<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    // Names start with the date, so the newest sorts last; mtime breaks ties.
    files.sort_by_key(|p| (fs::metadata(p).and_then(|m| m.modified()).ok(), p.clone()));
    files.pop().context("no result files in perf/history")
}

/// `plots` as seen from `base` when both are relative to the same directory.
fn relative_to(plots: &Path, base: &Path) -> String {
    match plots.strip_prefix(base) {
        Ok(p) if !base.as_os_str().is_empty() => p.display().to_string(),
        _ => plots.display().to_string(),
    }
}

/// Results of one scenario in a stable engine order.
pub fn results_for<'a>(run: &'a Value, scen: &str) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = run["results"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["scenario"] == scen).collect())
        .unwrap_or_default();
    v.sort_by_key(|r| {
        let e = r["engine"].as_str().unwrap_or("");
        ENGINE_ORDER.iter().position(|x| *x == e).unwrap_or(99)
    });
    v
}

pub fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x >= 1e6 => format!("{:.2} M", x / 1e6),
        Some(x) if x >= 1e3 => format!("{:.1} k", x / 1e3),
        Some(x) => format!("{x:.0}"),
    }
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x >= 1e6 => format!("{:.2} s", x / 1e6),
        Some(x) if x >= 1e4 => format!("{:.1} ms", x / 1e3),
        Some(x) if x >= 1e3 => format!("{:.2} ms", x / 1e3),
        Some(x) => format!("{x:.0} µs"),
    }
}

fn fmt_num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn fmt_int(v: &Value) -> String {
    v.as_u64()
        .map(|x| x.to_string())
        .or_else(|| v.as_f64().map(|x| format!("{x:.0}")))
        .unwrap_or_else(|| "–".into())
}

/// `x / base` as "1.23×", or a dash when either side is missing.
fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn engine_cell(r: &Value) -> String {
    let e = r["engine"].as_str().unwrap_or("?");
    match r["status"].as_str() {
        Some("ok") | None => format!("**{e}**"),
        Some(s) => format!("**{e}** ({s})"),
    }
}

fn render_markdown(
    run: &Value,
    input: &Path,
    previous: Option<(&Value, &str)>,
    plots: &str,
    figs: &[String],
) -> String {
    let mut md = String::new();
    let m = &run["machine"];
    let date = run["date"].as_str().unwrap_or("?");
    let rev = run["git_rev"].as_str().unwrap_or("?");
    let dirty = if run["git_dirty"].as_bool() == Some(true) {
        " (with uncommitted changes)"
    } else {
        ""
    };
    let _ = writeln!(md, "# tickwire performance results\n");
    let _ = writeln!(
        md,
        "Generated by `perf/run` and `perfreport` from `{}`: run of **{date}** at git revision \
         **{rev}**{dirty}.{}\n",
        shown_path(input),
        if run["quick"].as_bool() == Some(true) {
            " **Quick smoke run** (small counts, short durations): \
             not representative figures."
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Machine: {} × {}, {} MiB RAM, Linux {}. Toolchain: {}; node {} with ws {}; {}. \
         tickwire `--workers {}`. Load average at start {}, at end {}.\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["mem_mib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("?"),
        m["node"].as_str().unwrap_or("?"),
        m["ws"].as_str().unwrap_or("?"),
        m["nats_server"].as_str().unwrap_or("?"),
        run["tickwire_workers"],
        fmt_num(f(&m["loadavg_at_start"]), 2),
        fmt_num(f(&m["loadavg_at_end"]), 2),
    );
    let _ = writeln!(
        md,
        "> **Read with care.** Server, load generator and feed simulator share the same cores \
         on one machine, so the load generator's own CPU (last column) competes with the server \
         and caps what can be measured. Absolute figures move from run to run by tens of \
         percent; compare engines *within one run* (the ratio columns, baseline = 1.00×), not \
         across runs or machines. Latency is measured from the feed's intended send time to \
         receipt, so it includes queueing in the feed, the server and the client. CPU µs per \
         delivery is the server's utime+stime over the measured window divided by the \
         deliveries the load generator counted. The baseline is a single-threaded raw-TCP \
         broadcaster with no per-client protocol work: a yardstick for what the kernel allows, \
         not a competitor.\n"
    );
    let _ = writeln!(
        md,
        "Engine microbenchmarks (criterion: frame build, ingest line, ring hand-off, fan-out \
         CPU per delivery, conflation) close this page, from [MICROBENCH.md](MICROBENCH.md).\n"
    );

    summary(&mut md, run);
    if let Some((prev, name)) = previous {
        since_previous(&mut md, run, prev, name);
    }
    let params = &run["params"];
    for scen in run["scenarios"].as_array().into_iter().flatten() {
        let Some(s) = scen.as_str() else { continue };
        let p = &params[s];
        let _ = writeln!(
            md,
            "## {s}: {}\n\n{}\n",
            p["title"].as_str().unwrap_or(""),
            describe(s, p)
        );
        let rs = results_for(run, s);
        match s {
            "S2" | "S2-lg1" => table_s2(&mut md, &rs),
            "S7" => table_s7(&mut md, &rs),
            "S5" => table_s5(&mut md, &rs),
            _ => table_fanout(&mut md, &rs, s == "S4"),
        }
        for r in &rs {
            if let Some(e) = r["error"].as_str().or(r["note"].as_str()) {
                let _ = writeln!(md, "- {}: {e}", r["engine"].as_str().unwrap_or("?"));
            }
        }
        md.push('\n');
        for fig in figs.iter().filter(|x| figure_of(x) == Some(s)) {
            let _ = writeln!(md, "![{fig}]({plots}/{fig})\n");
        }
    }
    let _ = writeln!(
        md,
        "---\nRegenerate with `perf/run` (full matrix, ~40 min) or `perf/run --quick`; \
         see perf/README.md."
    );
    md
}

/// The scenario a plot belongs to, from its file name: `latency_S2.svg`,
/// `s2-lg1_cpu.svg`, `s5_rss.svg`.
fn figure_of(file: &str) -> Option<&'static str> {
    let stem = file.strip_suffix(".svg")?;
    let scen = stem
        .strip_prefix("latency_")
        .or_else(|| stem.rsplit_once('_').map(|(s, _)| s))?;
    SCENARIOS
        .iter()
        .copied()
        .find(|s| s.eq_ignore_ascii_case(scen))
}

/// Every scenario perf/run knows.
const SCENARIOS: [&str; 8] = ["S1", "S2", "S2-lg1", "S3", "S4", "S5", "S6", "S7"];

/// One line per engine with the headline figure of each scenario.
/// Summary columns: scenario and heading.
const SUMMARY_COLUMNS: [(&str, &str); 7] = [
    ("S1", "S1 p99 / CPU µs per deliv."),
    ("S2", "S2 max sustained delivered/s"),
    ("S2-lg1", "S2-lg1 max sustained delivered/s"),
    ("S3", "S3 delivered/s"),
    ("S4", "S4 fast-client p99"),
    ("S5", "S5 KiB per idle conn."),
    ("S6", "S6 connected / p99"),
];

/// The scenarios of `run` that the summary shows, as (scenario, heading).
fn summary_columns(run: &Value) -> Vec<(&'static str, &'static str)> {
    let scen: Vec<&str> = run["scenarios"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    SUMMARY_COLUMNS
        .iter()
        .copied()
        .filter(|c| scen.contains(&c.0))
        .collect()
}

/// One engine's headline figure for one scenario.
fn summary_cell(run: &Value, engine: &str, scen: &str) -> String {
    if matches!(scen, "S2" | "S2-lg1") {
        let rounds: Vec<&Value> = results_for(run, scen)
            .into_iter()
            .filter(|r| engine_name(r) == engine && r["status"] == "ok")
            .collect();
        return s2_summary(&rounds);
    }
    let r = results_for(run, scen)
        .into_iter()
        .find(|r| r["engine"] == engine && r["status"] == "ok");
    match (scen, r) {
        (_, None) => "–".to_string(),
        ("S1", Some(r)) => format!(
            "{} / {}",
            fmt_us(lat(r, "p99")),
            fmt_num(f(&r["server"]["cpu_us_per_delivery"]), 2)
        ),
        ("S3", Some(r)) => fmt_rate(f(&r["delivered_per_sec"])),
        ("S4", Some(r)) => fmt_us(lat(r, "p99")),
        ("S5", Some(r)) => fmt_num(f(&r["rss_kib_per_connection"]), 2),
        ("S6", Some(r)) => format!(
            "{} / {}",
            fmt_int(&r["loadgen"]["connected"]),
            fmt_us(lat(r, "p99"))
        ),
        _ => "–".into(),
    }
}

/// S2's headline over an engine's rounds (in round order): the median
/// round by its highest sustained step (the lower middle one for an even
/// count), then every round's, so one round that fell short neither hides
/// nor stands for the rest.
fn s2_summary(rounds: &[&Value]) -> String {
    let delivered = |r: &Value| best_step(r).and_then(|b| f(&b["delivered_per_sec"]));
    let mut order: Vec<&Value> = rounds.to_vec();
    order.sort_by(|a, b| {
        let (a, b) = (delivered(a).unwrap_or(0.0), delivered(b).unwrap_or(0.0));
        a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
    });
    let Some(mid) = order.get(order.len().saturating_sub(1) / 2) else {
        return "–".into();
    };
    let head = match best_step(mid) {
        Some(b) => format!(
            "{} (p99 {})",
            fmt_rate(f(&b["delivered_per_sec"])),
            fmt_us(lat(b, "p99"))
        ),
        None => "none sustained".into(),
    };
    if rounds.len() < 2 {
        return head;
    }
    let each: Vec<String> = rounds
        .iter()
        .map(|r| delivered(r).map_or_else(|| "none".into(), |d| fmt_rate(Some(d))))
        .collect();
    format!("{head}; rounds {}", each.join(" / "))
}

fn summary(md: &mut String, run: &Value) {
    let cols = summary_columns(run);
    let mut head = vec!["engine"];
    head.extend(cols.iter().map(|c| c.1));
    let _ = writeln!(md, "## Summary\n\n| {} |", head.join(" | "));
    let _ = writeln!(md, "|---|{}", "--:|".repeat(head.len() - 1));
    for e in run["engines"].as_array().into_iter().flatten() {
        let Some(e) = e.as_str() else { continue };
        let mut row = vec![format!("**{e}**")];
        row.extend(cols.iter().map(|(s, _)| summary_cell(run, e, s)));
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    if cols.iter().any(|c| matches!(c.0, "S2" | "S2-lg1")) {
        let _ = writeln!(
            md,
            "\nS2 and S2-lg1 run in rounds: each cell is the median round by its highest \
             sustained step (the lower middle one for an even count), then every round's."
        );
    }
    md.push('\n');
}

/// The same headline figures for tickwire and the baseline in the previous
/// full run, beside this one's, so a change can be judged at a glance (each
/// run against its own baseline: machines and load differ between runs).
fn since_previous(md: &mut String, run: &Value, prev: &Value, prev_file: &str) {
    let cols = summary_columns(run);
    let mut head = vec!["engine", "run"];
    head.extend(cols.iter().map(|c| c.1));
    let _ = writeln!(
        md,
        "## Since the previous run\n\nThe summary's figures beside those of `{prev_file}` \
         (revision {}, {}). Compare each engine with the baseline of its own run.\n",
        prev["git_rev"].as_str().unwrap_or("?"),
        prev["date"].as_str().unwrap_or("?")
    );
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "--:|".repeat(head.len() - 2));
    for e in ["tickwire", "baseline"] {
        for (label, r) in [("previous", prev), ("this run", run)] {
            let mut row = vec![format!("**{e}**"), label.to_string()];
            row.extend(cols.iter().map(|(s, _)| summary_cell(r, e, s)));
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
    }
    md.push('\n');
}

/// The scenarios in which `doc` measured tickwire.
fn tickwire_scenarios(doc: &Value) -> std::collections::BTreeSet<String> {
    doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["engine"] == "tickwire")
        .filter_map(|r| r["scenario"].as_str().map(str::to_string))
        .collect()
}

/// The newest full (not `--quick`) run in `input`'s folder from before `run`
/// that measured tickwire in every scenario `run` did (a partial run, such
/// as one scenario's comparison, has nothing to set beside the summary).
/// S2-lg1, a repeat of S2 under another load-generator setting, is not
/// required: runs from before it existed still compare.
fn previous_run(input: &Path, run: &Value) -> Option<(Value, String)> {
    let date = run["date"].as_str()?;
    let mut wanted = tickwire_scenarios(run);
    wanted.remove("S2-lg1");
    let dir = input.parent()?;
    let mut best: Option<(String, Value, String)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") || path == input {
            continue;
        }
        let Some(doc) = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            continue;
        };
        let d = doc["date"].as_str().unwrap_or("").to_string();
        let has_tickwire = !tickwire_scenarios(&doc).is_empty();
        let covers = wanted.is_subset(&tickwire_scenarios(&doc));
        if d.as_str() >= date || doc["quick"] == true || !has_tickwire || !covers {
            continue;
        }
        if best.as_ref().is_none_or(|(bd, _, _)| d > *bd) {
            let name = path.file_name()?.to_string_lossy().to_string();
            best = Some((d, doc, name));
        }
    }
    best.map(|(_, doc, name)| (doc, name))
}

fn describe(s: &str, p: &Value) -> String {
    let n = fmt_int(&p["connections"]);
    let d = fmt_int(&p["duration"]);
    match s {
        "S1" => format!(
            "{n} connections all subscribed to one channel, {} ticks/s, {d} s measured.",
            fmt_int(&p["rate"])
        ),
        "S2" | "S2-lg1" => format!(
            "{}{n} connections on one channel; the tick rate is stepped up ({} ticks/s, {d} s \
             each) until delivery falls below {}% of offered, p99 exceeds 10× the first \
             step's (and 50 ms), or clients are disconnected; a failing step is tried twice. \
             The first table shows the highest sustained step, the second every step beside \
             the baseline's.",
            if s == "S2-lg1" {
                "S2 again with the load generator at one thread (`loadgen --threads 1`): one \
                 epoll thread sharing the cores shows latency that more threads hide. "
            } else {
                ""
            },
            p["steps"]
                .as_array()
                .map(|a| a.iter().map(fmt_int).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            f(&p["keep_up"]).map_or("99".into(), |k| format!("{}", k * 100.0))
        ),
        "S3" => format!(
            "{n} connections each on {} of {} channels (Zipf), {} ticks/s over the same Zipf \
             universe, {d} s measured. Offered deliveries depend on the subscription draw; \
             '% offered' (≈) uses an estimate of the expected fan-out. Gaps show loss or \
             conflation.",
            fmt_int(&p["per_client"]),
            fmt_int(&p["universe"]),
            fmt_int(&p["rate"])
        ),
        "S4" => format!(
            "S1 ({n} connections, {} ticks/s) with {:.0}% slow clients reading at {} \
             messages/s. Delivered/s counts all clients; '% offered', latency and gaps are \
             for the fast clients. Slow clients may be disconnected or conflated by design.",
            fmt_int(&p["rate"]),
            f(&p["slow_fraction"]).unwrap_or(0.0) * 100.0,
            fmt_int(&p["slow_rate"])
        ),
        "S5" => format!(
            "{n} idle subscribed connections, no ticks. RSS per connection = (RSS with the \
             connections − RSS with none) / connections."
        ),
        "S7" => format!(
            "Connections stepped up ({}) at a constant offered load of {} deliveries/s on one \
             channel (ticks/s = offered / connections), {d} s each: what the connection count \
             costs in delivery, latency and CPU per delivery. Every step is shown.",
            p["connections_steps"]
                .as_array()
                .map(|a| a.iter().map(fmt_int).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            fmt_rate(f(&p["offered"]))
        ),
        "S6" => format!(
            "{n} connections on one channel at {} ticks/s: does everything connect and stay \
             connected?",
            fmt_int(&p["rate"])
        ),
        _ => String::new(),
    }
}

fn lat(r: &Value, k: &str) -> Option<f64> {
    f(&r["loadgen"]["latency_us"][k])
}

fn table_fanout(md: &mut String, rs: &[&Value], slow: bool) {
    let base = rs
        .iter()
        .find(|r| r["engine"] == "baseline" && r["status"] == "ok");
    let bd = base.and_then(|b| f(&b["delivered_per_sec"]));
    let bcpu = base.and_then(|b| f(&b["server"]["cpu_us_per_delivery"]));
    let bp99 = base.and_then(|b| lat(b, "p99"));
    let _ = writeln!(
        md,
        "| engine | delivered/s | % offered | vs baseline | p50 | p99 | p99 vs baseline | p99.9 \
         | max | gaps | disc. | connected | CPU µs/deliv. | vs baseline | server CPU | RSS | \
         loadgen CPU |{}",
        if slow {
            " slow clients | slow: deliveries | slow: skipped | slow: p99 |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|{}",
        if slow { "--:|--:|--:|--:|" } else { "" }
    );
    for r in rs {
        let lg = &r["loadgen"];
        let d = f(&r["delivered_per_sec"]);
        // With slow clients, "% offered" is for the fast clients only.
        let (dd, off) = match f(&r["offered_fast_per_sec"]) {
            Some(o) => (f(&r["fast_delivered_per_sec"]), Some(o)),
            None => (d, f(&r["offered_deliveries_per_sec"])),
        };
        let pct = match (dd, off) {
            (Some(d), Some(o)) if o > 0.0 => format!(
                "{}{:.1}%",
                if r["offered_estimated"] == true {
                    "≈"
                } else {
                    ""
                },
                100.0 * d / o
            ),
            _ => "–".into(),
        };
        let cpu = f(&r["server"]["cpu_us_per_delivery"]);
        let _ = write!(
            md,
            "| {} | {} | {pct} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            engine_cell(r),
            fmt_rate(d),
            ratio(d, bd),
            fmt_us(lat(r, "p50")),
            fmt_us(lat(r, "p99")),
            ratio(lat(r, "p99"), bp99),
            fmt_us(lat(r, "p999")),
            fmt_us(lat(r, "max")),
            fmt_int(&lg["gaps"]),
            fmt_int(&lg["disconnects"]),
            fmt_int(&lg["connected"]),
            fmt_int(&lg["connections"]),
            fmt_num(cpu, 3),
            ratio(cpu, bcpu),
            f(&r["server"]["cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
            f(&r["server"]["rss_kib"]).map_or("–".into(), |x| format!("{:.0} MiB", x / 1024.0)),
            f(&lg["loadgen_cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
        );
        if slow {
            let s = &lg["slow"];
            let _ = write!(
                md,
                " {} | {} | {} | {} |",
                fmt_int(&s["clients"]),
                fmt_int(&s["deliveries"]),
                fmt_int(&s["skipped"]),
                fmt_us(f(&s["latency_us"]["p99"]))
            );
        }
        md.push('\n');
    }
    md.push('\n');
}

fn best_step(r: &Value) -> Option<&Value> {
    let i = r["best_step"].as_u64()? as usize;
    r["steps"].get(i)
}

fn table_s7(md: &mut String, rs: &[&Value]) {
    let base: Vec<&Value> = rs
        .iter()
        .find(|r| r["engine"] == "baseline")
        .and_then(|r| r["steps"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "| engine | connections | ticks/s | delivered/s | % offered | p50 | p99 | p99 vs \
         baseline | max | gaps | CPU µs/deliv. | vs baseline | server CPU | RSS | loadgen CPU |"
    );
    let _ = writeln!(
        md,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for r in rs {
        for s in r["steps"].as_array().into_iter().flatten() {
            let b = base.iter().find(|b| b["connections"] == s["connections"]);
            let cpu = f(&s["server"]["cpu_us_per_delivery"]);
            let d = f(&s["delivered_per_sec"]);
            let pct = d
                .zip(f(&s["offered_deliveries_per_sec"]))
                .map_or("–".into(), |(d, o)| format!("{:.1}%", 100.0 * d / o));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {pct} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                engine_cell(r),
                fmt_int(&s["connections"]),
                fmt_int(&s["rate"]),
                fmt_rate(d),
                fmt_us(lat(s, "p50")),
                fmt_us(lat(s, "p99")),
                ratio(lat(s, "p99"), b.and_then(|b| lat(b, "p99"))),
                fmt_us(lat(s, "max")),
                fmt_int(&s["loadgen"]["gaps"]),
                fmt_num(cpu, 3),
                ratio(cpu, b.and_then(|b| f(&b["server"]["cpu_us_per_delivery"]))),
                f(&s["server"]["cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
                f(&s["server"]["rss_kib"])
                    .map_or("–".into(), |x| format!("{:.0} MiB", x / 1024.0)),
                f(&s["loadgen"]["loadgen_cpu_percent"])
                    .map_or("–".into(), |x| format!("{x:.0}%")),
            );
        }
    }
}

fn table_s2(md: &mut String, rs: &[&Value]) {
    let base = rs
        .iter()
        .find(|r| r["engine"] == "baseline")
        .and_then(|r| best_step(r));
    let bd = base.and_then(|b| f(&b["delivered_per_sec"]));
    let bcpu = base.and_then(|b| f(&b["server"]["cpu_us_per_delivery"]));
    let _ = writeln!(
        md,
        "| engine | max sustained delivered/s | vs baseline | at ticks/s | p50 | p99 | p99.9 | \
         max | CPU µs/deliv. | vs baseline | loadgen CPU | next step |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in rs {
        let steps = r["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let next = steps
            .iter()
            .find(|s| s["sustained"] == false)
            .map(|s| {
                format!(
                    "{} ticks/s: {} ({} delivered/s)",
                    fmt_int(&s["rate"]),
                    s["stop_reason"].as_str().unwrap_or("?"),
                    fmt_rate(f(&s["delivered_per_sec"]))
                )
            })
            .unwrap_or_else(|| "all steps sustained".into());
        let Some(b) = best_step(r) else {
            let _ = writeln!(
                md,
                "| {} | – | – | – | – | – | – | – | – | – | – | {next} |",
                engine_cell(r)
            );
            continue;
        };
        let d = f(&b["delivered_per_sec"]);
        let cpu = f(&b["server"]["cpu_us_per_delivery"]);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {next} |",
            engine_cell(r),
            fmt_rate(d),
            ratio(d, bd),
            fmt_int(&b["rate"]),
            fmt_us(lat(b, "p50")),
            fmt_us(lat(b, "p99")),
            fmt_us(lat(b, "p999")),
            fmt_us(lat(b, "max")),
            fmt_num(cpu, 3),
            ratio(cpu, bcpu),
            f(&b["loadgen"]["loadgen_cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
        );
    }
    md.push('\n');
    steps_beside_baseline(md, rs);
    let _ = writeln!(
        md,
        "<details><summary>All steps</summary>\n\n| engine | ticks/s | offered/s | delivered/s \
         | p50 | p99 | max | gaps | CPU µs/deliv. | server CPU | loadgen CPU | deliv./write \
         | sustained |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for r in rs {
        for s in r["steps"].as_array().into_iter().flatten() {
            let lg = &s["loadgen"];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["engine"].as_str().unwrap_or("?"),
                fmt_int(&s["rate"]),
                fmt_rate(f(&s["offered_deliveries_per_sec"])),
                fmt_rate(f(&s["delivered_per_sec"])),
                fmt_us(lat(s, "p50")),
                fmt_us(lat(s, "p99")),
                fmt_us(lat(s, "max")),
                fmt_int(&lg["gaps"]),
                fmt_num(f(&s["server"]["cpu_us_per_delivery"]), 3),
                f(&s["server"]["cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
                f(&lg["loadgen_cpu_percent"]).map_or("–".into(), |x| format!("{x:.0}%")),
                // tickwire's own count (perf/run reads /metrics); none for peers.
                fmt_num(f(&s["engine_counters"]["deliveries_per_write"]), 1),
                match (s["sustained"] == true, s["attempt"].as_u64() == Some(2)) {
                    (true, false) => "yes".to_string(),
                    (true, true) => "yes (2nd try)".to_string(),
                    (false, _) => format!("no: {}", s["stop_reason"].as_str().unwrap_or("?")),
                }
            );
        }
    }
    let _ = writeln!(md, "\n</details>\n");
}

/// An engine's name without its round: `tickwire#2` is `tickwire`.
fn engine_name(r: &Value) -> &str {
    r["engine_name"].as_str().unwrap_or_else(|| {
        let label = r["engine"].as_str().unwrap_or("?");
        label.split('#').next().unwrap_or(label)
    })
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One engine's steps at one tick rate over its rounds: median p99 and CPU
/// per delivery, the rounds that reached the rate and those that sustained it.
struct AtRate {
    p99: Option<f64>,
    cpu: Option<f64>,
    /// Every round's p99 and CPU per delivery at the rate.
    p99s: Vec<f64>,
    cpus: Vec<f64>,
    reached: usize,
    sustained: usize,
}

fn at_rate(rounds: &[&Value], rate: &Value) -> AtRate {
    let steps: Vec<&Value> = rounds
        .iter()
        .filter_map(|r| r["steps"].as_array()?.iter().find(|s| s["rate"] == *rate))
        .collect();
    let p99s: Vec<f64> = steps.iter().filter_map(|s| lat(s, "p99")).collect();
    let cpus: Vec<f64> = steps
        .iter()
        .filter_map(|s| f(&s["server"]["cpu_us_per_delivery"]))
        .collect();
    AtRate {
        p99: median(p99s.clone()),
        cpu: median(cpus.clone()),
        p99s,
        cpus,
        reached: steps.len(),
        sustained: steps.iter().filter(|s| s["sustained"] != false).count(),
    }
}

impl AtRate {
    /// What sets the figures apart: rounds that stopped before the rate, or
    /// did not sustain it.
    fn mark(&self, rounds: usize) -> String {
        match (rounds, self.reached, self.sustained) {
            (1, _, 0) => " (not sustained)".into(),
            (1, _, _) => String::new(),
            (n, r, s) if r == n && s == n => String::new(),
            (n, r, s) if r == s => format!(" ({r} of {n} rounds)"),
            (n, r, s) => format!(" ({r} of {n} rounds, {s} sustained)"),
        }
    }
}

/// Every step's p99 and CPU per delivery, each engine beside the baseline at
/// the same tick rate (the ratio: baseline = 1.00×): whether an engine is at
/// or below the baseline at every step, not only at its best. With several
/// rounds, each figure is the median over the rounds that reached the step.
fn steps_beside_baseline(md: &mut String, rs: &[&Value]) {
    let mut engines: Vec<(&str, Vec<&Value>)> = Vec::new();
    for r in rs {
        let name = engine_name(r);
        match engines.iter_mut().find(|(e, _)| *e == name) {
            Some((_, v)) => v.push(r),
            None => engines.push((name, vec![r])),
        }
    }
    let Some(at) = engines.iter().position(|(e, _)| *e == "baseline") else {
        return;
    };
    let base = engines.remove(at).1;
    if engines.is_empty() {
        return;
    }
    let mut rates: Vec<Value> = Vec::new();
    for r in rs {
        for s in r["steps"].as_array().into_iter().flatten() {
            if !rates.contains(&s["rate"]) {
                rates.push(s["rate"].clone());
            }
        }
    }
    rates.sort_by(|a, b| f(a).partial_cmp(&f(b)).unwrap_or(std::cmp::Ordering::Equal));
    let most = engines
        .iter()
        .map(|(_, v)| v.len())
        .chain([base.len()])
        .max();
    if let Some(n) = most.filter(|&n| n > 1) {
        let _ = writeln!(
            md,
            "Every step beside the baseline's: medians of the {n} rounds (of those that \
             reached the step).\n"
        );
    }
    let mut head = vec![
        "ticks/s".to_string(),
        "**baseline** p99 / CPU µs".to_string(),
    ];
    head.extend(
        engines
            .iter()
            .map(|(e, _)| format!("**{e}** p99 / CPU µs (× baseline)")),
    );
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|--:|{}", "--|".repeat(head.len() - 1));
    let mut above = Vec::new();
    for rate in &rates {
        let b = at_rate(&base, rate);
        let mut row = vec![
            fmt_int(rate),
            if b.reached == 0 {
                "–".into()
            } else {
                format!(
                    "{} / {}{}",
                    fmt_us(b.p99),
                    fmt_num(b.cpu, 3),
                    b.mark(base.len())
                )
            },
        ];
        for (e, rounds) in &engines {
            let a = at_rate(rounds, rate);
            for (metric, x, base_x, xs, base_xs) in [
                ("p99", a.p99, b.p99, &a.p99s, &b.p99s),
                ("CPU per delivery", a.cpu, b.cpu, &a.cpus, &b.cpus),
            ] {
                // The peers are listed in the table; the list is about tickwire.
                if let (Some(x), Some(base_x)) = (x, base_x)
                    && x > base_x
                    && e.starts_with("tickwire")
                {
                    above.push(Above {
                        engine: e,
                        rate: fmt_int(rate),
                        metric,
                        x,
                        base_x,
                        range: span(xs),
                        base_range: span(base_xs),
                        us: metric == "p99",
                    });
                }
            }
            row.push(if a.reached == 0 {
                "–".into()
            } else {
                format!(
                    "{} ({}) / {} ({}){}",
                    fmt_us(a.p99),
                    ratio(a.p99, b.p99),
                    fmt_num(a.cpu, 3),
                    ratio(a.cpu, b.cpu),
                    a.mark(rounds.len())
                )
            });
        }
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
    above_the_baseline(md, &above, most.unwrap_or(1));
}

/// A step where an engine's median is above the baseline's.
struct Above<'a> {
    engine: &'a str,
    rate: String,
    metric: &'static str,
    x: f64,
    base_x: f64,
    /// The rounds' lowest and highest.
    range: (f64, f64),
    base_range: (f64, f64),
    /// A latency (µs), else CPU µs per delivery.
    us: bool,
}

fn span(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Says which medians are above the baseline's, and whether the difference
/// held in every round (every round of the engine above every round of the
/// baseline) or the rounds overlap: perf/README's rule for telling a
/// difference between engines from the machine's noise.
fn above_the_baseline(md: &mut String, above: &[Above], rounds: usize) {
    if above.is_empty() {
        let _ = writeln!(
            md,
            "No tickwire engine's median is above the baseline's, in p99 or in CPU per delivery, at any step.\n"
        );
        return;
    }
    let held = above.iter().filter(|a| a.range.0 > a.base_range.1).count();
    let _ = writeln!(
        md,
        "tickwire medians above the baseline's: {}{}",
        above.len(),
        if rounds > 1 {
            format!(
                "; above in every round (the engine's lowest round above the baseline's highest): {held}."
            )
        } else {
            ".".into()
        }
    );
    md.push('\n');
    let show = |v: f64, us: bool| {
        if us {
            fmt_us(Some(v))
        } else {
            fmt_num(Some(v), 3)
        }
    };
    for a in above {
        let _ = write!(
            md,
            "- {} at {} ticks/s, {}: {} against {} ({:.3}×)",
            a.engine,
            a.rate,
            a.metric,
            show(a.x, a.us),
            show(a.base_x, a.us),
            a.x / a.base_x
        );
        if rounds > 1 {
            let _ = write!(
                md,
                "; rounds {}–{} against {}–{}: {}",
                show(a.range.0, a.us),
                show(a.range.1, a.us),
                show(a.base_range.0, a.us),
                show(a.base_range.1, a.us),
                if a.range.0 > a.base_range.1 {
                    "above in every round"
                } else {
                    "the rounds overlap"
                }
            );
        }
        md.push('\n');
    }
    md.push('\n');
}

fn table_s5(md: &mut String, rs: &[&Value]) {
    let bk = rs
        .iter()
        .find(|r| r["engine"] == "baseline")
        .and_then(|r| f(&r["rss_kib_per_connection"]));
    let _ = writeln!(
        md,
        "| engine | connected | RSS idle | RSS with connections | KiB per connection | vs \
         baseline |\n|---|--:|--:|--:|--:|--:|"
    );
    for r in rs {
        let k = f(&r["rss_kib_per_connection"]);
        let _ = writeln!(
            md,
            "| {} | {}/{} | {} | {} | {} | {} |",
            engine_cell(r),
            fmt_int(&r["loadgen"]["connected"]),
            fmt_int(&r["params"]["connections"]),
            f(&r["server_rss_kib_idle"]).map_or("–".into(), |x| format!("{:.1} MiB", x / 1024.0)),
            f(&r["server"]["rss_kib_max"])
                .map_or("–".into(), |x| format!("{:.1} MiB", x / 1024.0)),
            fmt_num(k, 2),
            ratio(k, bk),
        );
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microbench_table_is_copied_and_prose_is_not() {
        let text = "# T\n\nprose\n\n| a | b |\n|---|---|\n| x | 1 ns |\n\nmore prose\n";
        let md = microbench_section(text);
        assert!(md.contains("| a | b |\n|---|---|\n| x | 1 ns |\n"));
        assert!(!md.contains("prose\n\n|"));
        assert!(!md.contains("more prose"));
        assert_eq!(microbench_section("no table"), "");
        // Two tables stay two tables.
        let two = "| a |\n|---|\n| 1 |\n\nprose\n\n| b |\n|---|\n| 2 |\n";
        assert!(microbench_section(two).contains("| 1 |\n\n| b |"));
    }

    #[test]
    fn a_copied_table_is_labelled_with_its_headings_once() {
        let text = "# Page\n\n| a |\n|---|\n\n## One\n\nprose\n\n| b |\n|---|\n\n| c |\n|---|\n\n\
                    ### Sub\n\n| d |\n|---|\n\n## Two\n\n| e |\n|---|\n\n#not a heading\n\n| f |\n|---|\n\
                    ```\n# a comment\n```\n\n| g |\n|---|\n";
        let md = tables(text);
        // The page's title is not repeated over its tables.
        assert!(md.starts_with("\n| a |"), "{md}");
        assert!(md.contains("\n*One*\n\n| b |\n|---|\n\n| c |"), "{md}");
        assert_eq!(md.matches("*One*").count(), 1, "{md}");
        assert!(md.contains("\n*One · Sub*\n\n| d |"), "{md}");
        // A new section at the same level drops the subsection.
        assert!(md.contains("\n*Two*\n\n| e |"), "{md}");
        assert!(md.contains("| e |\n|---|\n\n| f |"), "{md}");
        assert!(md.contains("| f |\n|---|\n\n| g |"), "{md}");
        assert!(!md.contains("prose"));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_rate(Some(1_610_000.0)), "1.61 M");
        assert_eq!(fmt_rate(Some(49_990.0)), "50.0 k");
        assert_eq!(fmt_us(Some(56_800.0)), "56.8 ms");
        assert_eq!(fmt_us(Some(850.0)), "850 µs");
        assert_eq!(ratio(Some(2.0), Some(1.0)), "2.00×");
        assert_eq!(ratio(Some(2.0), None), "–");
    }

    #[test]
    fn renders_a_minimal_run() {
        let run: Value = serde_json::from_str(
            r#"{"date":"2026-01-01T00:00:00+00:00","git_rev":"abc","scenarios":["S1","S5"],
                "engines":["tickwire","baseline"],
                "params":{"S1":{"title":"t","connections":10,"rate":5,"duration":1},
                          "S5":{"title":"idle","connections":10,"duration":1}},
                "results":[
                  {"scenario":"S1","engine":"baseline","status":"ok","delivered_per_sec":50.0,
                   "offered_deliveries_per_sec":50,"loadgen":{"latency_us":{"p99":900.0}},
                   "server":{"cpu_us_per_delivery":2.0}},
                  {"scenario":"S1","engine":"tickwire","status":"ok","delivered_per_sec":25.0,
                   "offered_deliveries_per_sec":50,"loadgen":{"latency_us":{"p99":1800.0}},
                   "server":{"cpu_us_per_delivery":1.0}},
                  {"scenario":"S5","engine":"tickwire","status":"ok","rss_kib_per_connection":0.5}
                ]}"#,
        )
        .unwrap();
        let md = render_markdown(&run, Path::new("x.json"), None, "plots", &[]);
        assert!(md.contains("## S1"));
        assert!(md.contains("| **tickwire** | 25 | 50.0% | 0.50× |"));
        assert!(md.contains("0.50×"));
        assert!(md.contains("## Summary"));
        assert!(!md.contains("## Since the previous run"));

        // Beside an older run: its figures and this run's, labelled.
        let mut prev = run.clone();
        prev["git_rev"] = "old".into();
        prev["results"][1]["loadgen"]["latency_us"]["p99"] = 3600.0.into();
        let md = render_markdown(
            &run,
            Path::new("x.json"),
            Some((&prev, "prev.json")),
            "plots",
            &[],
        );
        assert!(md.contains("## Since the previous run"));
        assert!(md.contains("`prev.json` (revision old"));
        assert!(
            md.contains("| **tickwire** | previous | 3.60 ms / 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| **tickwire** | this run | 1.80 ms / 1.00 |"),
            "{md}"
        );
    }

    /// One S2 step of a result, as perf/run writes it.
    fn step_json(rate: u64, p99: f64, cpu: f64, sustained: bool) -> String {
        format!(
            r#"{{"rate":{rate},"sustained":{sustained},"loadgen":{{"latency_us":{{"p99":{p99}}}}},
                "server":{{"cpu_us_per_delivery":{cpu}}}}}"#
        )
    }

    #[test]
    fn s2_steps_stand_beside_the_baseline_at_each_rate() {
        let step = step_json;
        let run: Value = serde_json::from_str(&format!(
            r#"{{"scenarios":["S2-lg1"],"engines":["tickwire","baseline"],
                "params":{{"S2-lg1":{{"title":"t","connections":10,"steps":[50,100]}}}},
                "results":[
                  {{"scenario":"S2-lg1","engine":"baseline","status":"ok","best_step":0,
                    "steps":[{},{}]}},
                  {{"scenario":"S2-lg1","engine":"tickwire","status":"ok","best_step":0,
                    "steps":[{}]}}]}}"#,
            step(50, 2000.0, 2.0, true),
            step(100, 4000.0, 1.0, false),
            step(50, 1000.0, 3.0, true),
        ))
        .unwrap();
        let md = render_markdown(&run, Path::new("x.json"), None, "plots", &[]);
        assert!(md.contains("## S2-lg1"), "{md}");
        assert!(md.contains("load generator at one thread"), "{md}");
        assert!(
            md.contains("| 50 | 2.00 ms / 2.000 | 1.00 ms (0.50×) / 3.000 (1.50×) |"),
            "{md}"
        );
        // A rate the engine did not reach, and a step the baseline did not sustain.
        assert!(
            md.contains("| 100 | 4.00 ms / 1.000 (not sustained) | – |"),
            "{md}"
        );
    }

    #[test]
    fn all_steps_give_tickwires_deliveries_per_write_and_none_for_a_peer() {
        let counted = r#"{"rate":50,"sustained":true,"loadgen":{"latency_us":{"p99":1000}},
            "server":{"cpu_us_per_delivery":1.0},
            "engine_counters":{"deliveries":460,"writes":20,"deliveries_per_write":23.0}}"#;
        let run: Value = serde_json::from_str(&format!(
            r#"{{"scenarios":["S2"],"engines":["tickwire","baseline"],
                "params":{{"S2":{{"title":"t","connections":10,"steps":[50]}}}},
                "results":[
                  {{"scenario":"S2","engine":"baseline","status":"ok","best_step":0,
                    "steps":[{}]}},
                  {{"scenario":"S2","engine":"tickwire","status":"ok","best_step":0,
                    "steps":[{counted}]}}]}}"#,
            step_json(50, 2000.0, 2.0, true),
        ))
        .unwrap();
        let md = render_markdown(&run, Path::new("x.json"), None, "plots", &[]);
        let row = |engine: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {engine} | 50 |")))
                .unwrap_or_else(|| panic!("no {engine} step row in\n{md}"))
                .to_string()
        };
        assert!(
            row("tickwire").ends_with("| 23.0 | yes |"),
            "{}",
            row("tickwire")
        );
        assert!(
            row("baseline").ends_with("| – | yes |"),
            "{}",
            row("baseline")
        );
    }

    /// One engine's S2 result in one round (`label`: `engine#k`).
    fn s2_result(label: &str, name: &str, steps: &[String]) -> String {
        format!(
            r#"{{"scenario":"S2","engine":"{label}","engine_name":"{name}","status":"ok",
                "best_step":0,"steps":[{}]}}"#,
            steps.join(",")
        )
    }

    /// RESULTS.md for an S2 run of tickwire and the baseline at 50 and 100.
    fn s2_report(results: &[String]) -> String {
        let run: Value = serde_json::from_str(&format!(
            r#"{{"scenarios":["S2"],"engines":["tickwire","baseline"],
                "params":{{"S2":{{"title":"t","connections":10,"steps":[50,100]}}}},
                "results":[{}]}}"#,
            results.join(",")
        ))
        .unwrap();
        render_markdown(&run, Path::new("x.json"), None, "plots", &[])
    }

    #[test]
    fn the_summary_gives_the_median_round_of_s2_and_every_rounds_figure() {
        let round = |label: &str, best: Option<(u64, f64)>| {
            let (best_step, steps) = match best {
                Some((delivered, p99)) => (
                    "0".to_string(),
                    format!(
                        r#"{{"rate":1,"sustained":true,"delivered_per_sec":{delivered},
                            "loadgen":{{"latency_us":{{"p99":{p99}}}}}}}"#
                    ),
                ),
                None => ("null".to_string(), String::new()),
            };
            format!(
                r#"{{"scenario":"S2","engine":"{label}","status":"ok",
                    "best_step":{best_step},"steps":[{steps}]}}"#
            )
        };
        let run = |results: &[String]| -> Value {
            serde_json::from_str(&format!(
                r#"{{"scenarios":["S2"],"engines":["tickwire"],"results":[{}]}}"#,
                results.join(",")
            ))
            .unwrap()
        };
        // Round 1 fell short; the median round is the 6.4 M one, not round 1.
        let three = run(&[
            round("tickwire", Some((3_200_000, 22_800.0))),
            round("tickwire#2", Some((6_400_000, 67_400.0))),
            round("tickwire#3", Some((8_000_000, 69_700.0))),
        ]);
        assert_eq!(
            summary_cell(&three, "tickwire", "S2"),
            "6.40 M (p99 67.4 ms); rounds 3.20 M / 6.40 M / 8.00 M"
        );
        // Two rounds: the lower one; a round with no sustained step counts as none.
        let two = run(&[
            round("tickwire", None),
            round("tickwire#2", Some((1_000_000, 9_000.0))),
        ]);
        assert_eq!(
            summary_cell(&two, "tickwire", "S2"),
            "none sustained; rounds none / 1.00 M"
        );
        // One round: its figure alone.
        let one = run(&[round("tickwire", Some((1_000_000, 9_000.0)))]);
        assert_eq!(summary_cell(&one, "tickwire", "S2"), "1.00 M (p99 9.00 ms)");
        assert_eq!(summary_cell(&one, "baseline", "S2"), "–");
        let mut md = String::new();
        summary(&mut md, &three);
        assert!(md.contains("each cell is the median round"), "{md}");
    }

    #[test]
    fn s2_steps_of_several_rounds_give_medians() {
        let step = |rate, p99, cpu| step_json(rate, p99, cpu, true);
        let res = s2_result;
        let results = [
            res("baseline", "baseline", &[step(50, 2000.0, 2.0)]),
            res(
                "tickwire",
                "tickwire",
                &[step(50, 1000.0, 1.0), step(100, 9000.0, 9.0)],
            ),
            res("baseline#2", "baseline", &[step(50, 4000.0, 4.0)]),
            res("tickwire#2", "tickwire", &[step(50, 3000.0, 3.0)]),
            res("baseline#3", "baseline", &[step(50, 6000.0, 6.0)]),
            res("tickwire#3", "tickwire", &[step(50, 2000.0, 2.0)]),
        ];
        let md = s2_report(&results);
        assert!(md.contains("medians of the 3 rounds"), "{md}");
        // Baseline median 4 ms / 4 µs; tickwire median 2 ms / 2 µs.
        assert!(
            md.contains("| 50 | 4.00 ms / 4.000 | 2.00 ms (0.50×) / 2.000 (0.50×) |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | – | 9.00 ms (–) / 9.000 (–) (1 of 3 rounds) |"),
            "{md}"
        );
        assert_eq!(median(vec![3.0, 1.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        // tickwire's 9 ms at 100 stands alone (no baseline): nothing above.
        assert!(
            md.contains("No tickwire engine's median is above the baseline's"),
            "{md}"
        );
    }

    #[test]
    fn medians_above_the_baseline_say_whether_the_rounds_overlap() {
        let step = |rate, p99, cpu| step_json(rate, p99, cpu, true);
        let res = s2_result;
        // At 50: tickwire's CPU 5/6/7 against 4/4.5/4.8 (above in every
        // round); its p99 2.5/3/9 ms against 1/2/3 (median above, rounds
        // overlap). At 100 it is below in both.
        let results = [
            res(
                "baseline",
                "baseline",
                &[step(50, 1000.0, 4.0), step(100, 5000.0, 2.0)],
            ),
            res(
                "tickwire",
                "tickwire",
                &[step(50, 2500.0, 5.0), step(100, 4000.0, 1.0)],
            ),
            res("baseline#2", "baseline", &[step(50, 2000.0, 4.5)]),
            res("tickwire#2", "tickwire", &[step(50, 3000.0, 6.0)]),
            res("baseline#3", "baseline", &[step(50, 3000.0, 4.8)]),
            res("tickwire#3", "tickwire", &[step(50, 9000.0, 7.0)]),
        ];
        let md = s2_report(&results);
        assert!(
            md.contains(
                "tickwire medians above the baseline's: 2; above in every round (the engine's lowest \
                 round above the baseline's highest): 1."
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "- tickwire at 50 ticks/s, p99: 3.00 ms against 2.00 ms (1.500×); rounds \
                 2.50 ms–9.00 ms against 1.00 ms–3.00 ms: the rounds overlap"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "- tickwire at 50 ticks/s, CPU per delivery: 6.000 against 4.500 (1.333×); \
                 rounds 5.000–7.000 against 4.000–4.800: above in every round"
            ),
            "{md}"
        );
        assert!(!md.contains("at 100 ticks/s"), "{md}");
    }

    #[test]
    fn figures_belong_to_their_own_scenario() {
        assert_eq!(figure_of("latency_S2.svg"), Some("S2"));
        assert_eq!(figure_of("latency_S2-lg1.svg"), Some("S2-lg1"));
        assert_eq!(figure_of("s2_cpu.svg"), Some("S2"));
        assert_eq!(figure_of("s2-lg1_deliveries.svg"), Some("S2-lg1"));
        assert_eq!(figure_of("s5_rss.svg"), Some("S5"));
        assert_eq!(figure_of("notes.txt"), None);
    }

    #[test]
    fn previous_run_is_the_newest_older_full_run() {
        let dir = std::env::temp_dir().join(format!("perfreport-prev-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let doc_of = |date: &str, quick: bool, scenarios: &[&str]| {
            let results: Vec<String> = scenarios
                .iter()
                .map(|s| format!(r#"{{"engine":"tickwire","scenario":"{s}"}}"#))
                .collect();
            format!(
                r#"{{"date":"{date}","quick":{quick},"results":[{}]}}"#,
                results.join(",")
            )
        };
        let doc = |date: &str, quick: bool| doc_of(date, quick, &["S1", "S2"]);
        fs::write(dir.join("a.json"), doc("2026-01-01T00:00:00+00:00", false)).unwrap();
        fs::write(dir.join("b.json"), doc("2026-01-02T00:00:00+00:00", false)).unwrap();
        fs::write(dir.join("c.json"), doc("2026-01-03T00:00:00+00:00", true)).unwrap();
        // Newer, but only one scenario of the two.
        let partial = doc_of("2026-01-03T12:00:00+00:00", false, &["S2"]);
        fs::write(dir.join("p.json"), partial).unwrap();
        fs::write(dir.join("d.json"), doc("2026-01-04T00:00:00+00:00", false)).unwrap();
        let run: Value = serde_json::from_str(&doc("2026-01-04T00:00:00+00:00", false)).unwrap();
        let (_, name) = previous_run(&dir.join("d.json"), &run).unwrap();
        assert_eq!(name, "b.json");
        // A run with S2-lg1 still compares with one from before S2-lg1.
        let twin = doc_of("2026-01-05T00:00:00+00:00", false, &["S1", "S2", "S2-lg1"]);
        fs::write(dir.join("e.json"), &twin).unwrap();
        let run: Value = serde_json::from_str(&twin).unwrap();
        let (_, name) = previous_run(&dir.join("e.json"), &run).unwrap();
        assert_eq!(name, "d.json");
        fs::remove_dir_all(dir).ok();
    }
}
