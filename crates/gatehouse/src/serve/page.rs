//! The status page on the admin listener's `/`: one self-contained HTML
//! document (no external assets, it must work offline) with the farm at a
//! glance: services and backends with health and since-when, requests per
//! second and latency over the last minutes, the backup repositories, and
//! the log tail with its search box.
//!
//! The server renders everything, tables and charts (inline SVG), so the
//! page is whole without JavaScript; the small script at the end only
//! re-fetches the same URL every two seconds and swaps the sections marked
//! `data-live`, leaving the search form (and the reader's focus) alone.
//! One rendering path means the live page and the no-script page cannot
//! disagree. Rendering is a pure function of [`Overview`], so it is tested
//! without a running farm.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use gatehouse_backupd::RepoInfo;

/// Everything the page shows, gathered by the admin listener.
pub struct Overview {
    pub version: &'static str,
    pub config: String,
    pub uptime: Duration,
    pub reloads: u64,
    pub now: SystemTime,
    pub services: Vec<ServiceCard>,
    /// Seconds between two points of the charts.
    pub step: Duration,
    /// None: this gatehouse has no log server.
    pub logs: Option<LogTail>,
    /// None: no backup server; Err: its directory could not be read.
    pub backups: Option<std::sync::Arc<Result<Vec<RepoInfo>, String>>>,
}

pub struct ServiceCard {
    pub name: String,
    pub mode: String,
    pub listen: String,
    pub balance: String,
    pub backends: Vec<BackendRow>,
    /// Requests per second, oldest first, one point per `step`; None
    /// before the first measurement.
    pub rps: Vec<Option<f64>>,
    /// Mean latency in milliseconds per step; None where nothing was answered.
    pub latency_ms: Vec<Option<f64>>,
}

pub struct BackendRow {
    pub name: String,
    /// The pool: the service's own backends, or a route's.
    pub pool: String,
    pub addr: String,
    pub weight: u32,
    /// "up", "down" or "unknown".
    pub state: &'static str,
    pub since: SystemTime,
    pub last_failure: Option<String>,
    pub connections: i64,
    pub requests: u64,
    pub rate: f64,
}

pub struct LogTail {
    /// The search as asked (the form keeps it).
    pub grep: String,
    pub host: String,
    /// The hosts the store knows, for the host filter.
    pub hosts: Vec<String>,
    /// Lines oldest first as (host, the rest of `host | line`), or why
    /// there are none (a bad regular expression, an unreadable store).
    pub lines: Result<Vec<(String, String)>, String>,
}

/// How many log lines the page shows.
pub const LOG_LINES: usize = 25;

pub fn render(o: &Overview) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let (up, total, down) = backend_counts(o);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{title}gatehouse status</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header>\n<h1>gatehouse</h1>\n\
         <nav aria-label=\"Sections\"><a href=\"#services\">Services</a> <a href=\"#backups\">Backups</a> \
         <a href=\"#logs\">Logs</a></nav>\n\
         <p id=\"summary\" role=\"status\" aria-live=\"polite\" data-live>{summary}</p>\n</header>\n\
         <main id=\"main\">\n",
        title = if down.is_empty() { "" } else { "(down) " },
        summary = escape(&summary(up, total, &down)),
    );
    services_section(&mut html, o);
    // The log tail is the long one: last, so the rest stays in view.
    backups_section(&mut html, o);
    logs_section(&mut html, o);
    let _ = write!(
        html,
        "</main>\n<footer>\n<p id=\"about\" data-live>gatehouse {version} · config <code>{config}</code> · \
         up {uptime} · {reloads} reload{s} · page of <time datetime=\"{now}\">{now}</time></p>\n\
         <p>Also here: <a href=\"/status\">/status</a> (JSON), <a href=\"/status/history\">/status/history</a>, \
         <a href=\"/metrics\">/metrics</a>, <a href=\"/logs\">/logs</a>, <a href=\"/logs/stats\">/logs/stats</a>, \
         <a href=\"/backups\">/backups</a>. <a href=\"\" id=\"refresh\">Refresh</a> \
         <span id=\"live\"></span></p>\n</footer>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        version = o.version,
        config = escape(&o.config),
        uptime = humantime::format_duration(Duration::from_secs(o.uptime.as_secs())),
        reloads = o.reloads,
        s = if o.reloads == 1 { "" } else { "s" },
        now = humantime::format_rfc3339_seconds(o.now),
    );
    html
}

fn backend_counts(o: &Overview) -> (usize, usize, Vec<String>) {
    let mut up = 0;
    let mut total = 0;
    let mut down = Vec::new();
    for s in &o.services {
        for b in &s.backends {
            total += 1;
            match b.state {
                "up" => up += 1,
                "down" => down.push(format!("{} ({})", b.name, s.name)),
                _ => {}
            }
        }
    }
    (up, total, down)
}

fn summary(up: usize, total: usize, down: &[String]) -> String {
    match (total, down.len()) {
        (0, _) => "No services configured.".to_string(),
        (_, 0) if up == total => format!("All {total} backend{} up.", if total == 1 { "" } else { "s" }),
        (_, 0) => format!("{up} of {total} backends up; the others are not checked yet."),
        (_, n) => format!("{up} of {total} backends up; {n} down: {}.", down.join(", ")),
    }
}

fn services_section(html: &mut String, o: &Overview) {
    html.push_str(
        "<section id=\"services\" aria-labelledby=\"services-h\">\n<h2 id=\"services-h\">Services</h2>\n",
    );
    html.push_str("<div id=\"services-live\" data-live>\n");
    if o.services.is_empty() {
        html.push_str("<p>No [[service]] in the config.</p>\n");
    }
    for s in &o.services {
        let id = slug(&s.name);
        let _ = write!(
            html,
            "<article class=\"service\" aria-labelledby=\"svc-{id}\">\n<h3 id=\"svc-{id}\">{name} \
             <small>{mode} on {listen}, {balance}</small></h3>\n\
             <table>\n<caption>Backends of {name}</caption>\n<thead><tr><th scope=\"col\">Backend</th>\
             <th scope=\"col\">Address</th><th scope=\"col\">Health</th><th scope=\"col\">Since</th>\
             <th scope=\"col\" class=\"num\">Connections</th><th scope=\"col\" class=\"num\">Requests</th>\
             <th scope=\"col\" class=\"num\">Req/s</th></tr></thead>\n<tbody>\n",
            name = escape(&s.name),
            mode = escape(&s.mode),
            listen = escape(&s.listen),
            balance = escape(&s.balance),
        );
        for b in &s.backends {
            let label = if b.pool == s.name {
                escape(&b.name)
            } else {
                format!("{} <small>route {}</small>", escape(&b.name), escape(&b.pool))
            };
            let why = match (&b.last_failure, b.state) {
                (Some(why), "down") => format!("<br><small>{}</small>", escape(why)),
                _ => String::new(),
            };
            let _ = writeln!(
                html,
                "<tr class=\"backend\" data-backend=\"{name}\" data-state=\"{state}\"><th scope=\"row\">{label}</th>\
                 <td><code>{addr}</code></td><td><span class=\"state {state}\">{mark} {state}</span>{why}</td>\
                 <td><time datetime=\"{at}\" title=\"{at}\">{ago} ago</time></td><td class=\"num\">{conns}</td>\
                 <td class=\"num\">{requests}</td><td class=\"num\">{rate:.1}</td></tr>",
                name = escape(&b.name),
                state = b.state,
                mark = match b.state {
                    "up" => "●",
                    "down" => "✕",
                    _ => "?",
                },
                addr = escape(&b.addr),
                at = humantime::format_rfc3339_seconds(b.since),
                ago = age(o.now, b.since),
                conns = b.connections,
                requests = b.requests,
                rate = b.rate,
            );
        }
        html.push_str("</tbody>\n</table>\n<div class=\"charts\">\n");
        chart(
            html,
            &format!("{id}-rps"),
            "Requests per second",
            "req/s",
            &s.rps,
            o.step,
        );
        chart(
            html,
            &format!("{id}-lat"),
            "Mean latency",
            "ms",
            &s.latency_ms,
            o.step,
        );
        html.push_str("</div>\n</article>\n");
    }
    html.push_str("</div>\n</section>\n");
}

/// A line chart as inline SVG, with its figures in words beside it: the
/// picture is for the eye, the caption for everyone.
fn chart(html: &mut String, id: &str, what: &str, unit: &str, points: &[Option<f64>], step: Duration) {
    const W: f64 = 320.0;
    const H: f64 = 64.0;
    let minutes = (points.len() as f64 * step.as_secs_f64() / 60.0).round().max(1.0);
    let max = points.iter().flatten().copied().fold(0.0, f64::max);
    let last = points.iter().rev().flatten().next().copied();
    let caption = match last {
        None => format!("{what}, last {minutes} min: no data yet"),
        Some(now) => format!(
            "{what}, last {minutes} min: now {} {unit}, peak {} {unit}",
            figure(now),
            figure(max)
        ),
    };
    let _ = write!(
        html,
        "<figure class=\"chart\">\n<svg role=\"img\" aria-labelledby=\"{id}-cap\" viewBox=\"0 0 {W} {H}\" \
         width=\"{W}\" height=\"{H}\" preserveAspectRatio=\"none\">\
         <rect class=\"frame\" x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\"/>"
    );
    let scale = if max > 0.0 { max * 1.1 } else { 1.0 };
    let dx = if points.len() > 1 {
        W / (points.len() - 1) as f64
    } else {
        W
    };
    // One polyline per run of known points: a gap stays a gap.
    let mut run = String::new();
    let flush = |run: &mut String, html: &mut String| {
        if !run.is_empty() {
            let _ = write!(html, "<polyline points=\"{}\"/>", run.trim_end());
            run.clear();
        }
    };
    for (i, p) in points.iter().enumerate() {
        match p {
            Some(v) => {
                let x = i as f64 * dx;
                let y = H - 2.0 - (v / scale) * (H - 4.0);
                let _ = write!(run, "{x:.1},{y:.1} ");
            }
            None => flush(&mut run, html),
        }
    }
    flush(&mut run, html);
    let _ = write!(
        html,
        "</svg>\n<figcaption id=\"{id}-cap\">{}</figcaption>\n</figure>\n",
        escape(&caption)
    );
}

fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn logs_section(html: &mut String, o: &Overview) {
    html.push_str("<section id=\"logs\" aria-labelledby=\"logs-h\">\n<h2 id=\"logs-h\">Log tail</h2>\n");
    let Some(tail) = &o.logs else {
        html.push_str("<p>No [log_server] in the config.</p>\n</section>\n");
        return;
    };
    let _ = write!(
        html,
        "<form method=\"get\" action=\"/\" role=\"search\" aria-label=\"Search the logs\">\n\
         <label for=\"grep\">Search (regular expression)</label> \
         <input id=\"grep\" name=\"grep\" type=\"search\" value=\"{grep}\" spellcheck=\"false\" \
         autocomplete=\"off\">\n<label for=\"host\">Host</label> <select id=\"host\" name=\"host\">\
         <option value=\"\">all</option>",
        grep = escape(&tail.grep),
    );
    for h in &tail.hosts {
        let _ = write!(
            html,
            "<option{}>{}</option>",
            if *h == tail.host { " selected" } else { "" },
            escape(h)
        );
    }
    html.push_str(
        "</select>\n<button type=\"submit\">Search</button> <a href=\"/#logs\">Clear</a>\n</form>\n\
         <div id=\"logs-live\" data-live>\n",
    );
    match &tail.lines {
        Err(why) => {
            let _ = writeln!(html, "<p class=\"error\" role=\"alert\">{}</p>", escape(why));
        }
        Ok(lines) if lines.is_empty() => {
            let what = if tail.grep.is_empty() && tail.host.is_empty() {
                "No lines received yet."
            } else {
                "No line matches."
            };
            let _ = writeln!(html, "<p>{what}</p>");
        }
        Ok(lines) => {
            let _ = write!(
                html,
                "<table class=\"logs\">\n<caption>The last {} line{}{}, oldest first</caption>\n\
                 <thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Line</th></tr></thead>\n<tbody>\n",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
                if tail.grep.is_empty() {
                    String::new()
                } else {
                    format!(" matching {}", escape(&tail.grep))
                },
            );
            for (host, text) in lines {
                let _ = writeln!(
                    html,
                    "<tr><th scope=\"row\">{}</th><td><code>{}</code></td></tr>",
                    escape(host),
                    escape(text)
                );
            }
            html.push_str("</tbody>\n</table>\n");
        }
    }
    html.push_str("</div>\n</section>\n");
}

fn backups_section(html: &mut String, o: &Overview) {
    html.push_str(
        "<section id=\"backups\" aria-labelledby=\"backups-h\">\n<h2 id=\"backups-h\">Backups</h2>\n\
         <div id=\"backups-live\" data-live>\n",
    );
    match o.backups.as_deref() {
        None => html.push_str("<p>No [backup_server] in the config.</p>\n"),
        Some(Err(why)) => {
            let _ = writeln!(html, "<p class=\"error\" role=\"alert\">{}</p>", escape(why));
        }
        Some(Ok(repos)) if repos.is_empty() => {
            html.push_str("<p>No repositories yet (<code>restic init</code> makes one).</p>\n")
        }
        Some(Ok(repos)) => {
            html.push_str(
                "<table>\n<caption>Repositories</caption>\n<thead><tr><th scope=\"col\">Repository</th>\
                 <th scope=\"col\" class=\"num\">Size</th><th scope=\"col\">Last write</th></tr></thead>\n<tbody>\n",
            );
            for r in repos {
                let last = match r.last_write {
                    Some(t) => format!(
                        "<time datetime=\"{at}\" title=\"{at}\">{} ago</time>",
                        age(o.now, t),
                        at = humantime::format_rfc3339_seconds(t)
                    ),
                    None => "never".to_string(),
                };
                let _ = writeln!(
                    html,
                    "<tr><th scope=\"row\"><code>/{}</code></th><td class=\"num\">{}</td><td>{last}</td></tr>",
                    escape(&r.repo),
                    bytesize::ByteSize::b(r.bytes).display().iec(),
                );
            }
            html.push_str("</tbody>\n</table>\n");
        }
    }
    html.push_str("</div>\n</section>\n");
}

/// "3m 12s": whole seconds, the two largest units.
fn age(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).map_or(0, |d| d.as_secs());
    let text = humantime::format_duration(Duration::from_secs(secs)).to_string();
    let parts: Vec<&str> = text.split(' ').take(2).collect();
    parts.join(" ")
}

/// An id fragment from a service name (names are already restricted by
/// validation; this keeps the page valid whatever they hold).
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #57606a; --line: #d0d7de;
  --up: #1a7f37; --down: #b3261e; --unknown: #6e7781; --chart: #0969da; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9da7b3;
  --line: #30363d; --up: #3fb950; --down: #f85149; --unknown: #8b949e; --chart: #58a6ff; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; font: 15px/1.45 system-ui, sans-serif;
  color: var(--fg); background: var(--bg); }
h1 { margin: 0; font-size: 1.5rem; } h2 { margin-top: 2rem; border-bottom: 1px solid var(--line); }
h3 small, caption, figcaption, footer, .logs small { color: var(--muted); font-weight: normal; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: baseline; }
#summary { margin: 0; font-weight: 600; }
a { color: var(--chart); } a:focus-visible, button:focus-visible, input:focus-visible,
select:focus-visible { outline: 3px solid var(--chart); outline-offset: 2px; }
.skip { position: absolute; left: -999px; } .skip:focus { left: 1rem; top: 1rem; background: var(--bg); }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
caption { text-align: left; padding: .25rem 0; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px/1.4 ui-monospace, monospace; overflow-wrap: anywhere; }
.state { display: inline-block; padding: 0 .5rem; border-radius: .75rem; color: #fff; font-weight: 600; }
.state.up { background: var(--up); } .state.down { background: var(--down); }
.state.unknown { background: var(--unknown); }
tr[data-state="down"] th { color: var(--down); }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } svg { display: block; max-width: 100%; }
svg .frame { fill: none; stroke: var(--line); } svg polyline { fill: none; stroke: var(--chart); stroke-width: 1.5; }
form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .5rem 0; }
input[type=search] { min-width: 16rem; } input, select, button { font: inherit; padding: .2rem .4rem; }
.error { color: var(--down); font-weight: 600; }
"#;

/// Re-fetch the page and swap the live sections; errors go to the page's
/// own "live" note, not the console, and a hidden tab does not poll.
const SCRIPT: &str = r#"
(function () {
  "use strict";
  var note = document.getElementById("live");
  var period = 2000;
  function say(text) { if (note.textContent !== text) note.textContent = text; }
  function refresh() {
    if (document.hidden) { setTimeout(refresh, period); return; }
    fetch(location.pathname + location.search, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("status " + r.status); } return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next && next.innerHTML !== el.innerHTML) { el.innerHTML = next.innerHTML; }
        });
        document.title = fresh.title;
        say("(updating live)");
      })
      .catch(function (e) { say("(not updating: " + e.message + ")"); })
      .then(function () { setTimeout(refresh, period); });
  }
  say("(updating live)");
  setTimeout(refresh, period);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn overview() -> Overview {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let backend = |name: &str, state| BackendRow {
            name: name.into(),
            pool: "web".into(),
            addr: "127.0.0.1:8081".into(),
            weight: 1,
            state,
            since: now - Duration::from_secs(125),
            last_failure: Some("connect: connection refused".into()),
            connections: 2,
            requests: 40,
            rate: 1.5,
        };
        Overview {
            version: "0.1.0",
            config: "/etc/gatehouse/gatehouse.toml".into(),
            uptime: Duration::from_secs(3700),
            reloads: 1,
            now,
            services: vec![ServiceCard {
                name: "web".into(),
                mode: "http".into(),
                listen: "127.0.0.1:8080".into(),
                balance: "round-robin".into(),
                backends: vec![backend("web1", "up"), backend("web2", "down")],
                rps: vec![Some(0.0), Some(2.0), Some(4.0)],
                latency_ms: vec![None, Some(1.0), Some(3.0)],
            }],
            step: Duration::from_secs(20),
            logs: Some(LogTail {
                grep: "a\"<b".into(),
                host: "web2".into(),
                hosts: vec!["web1".into(), "web2".into()],
                lines: Ok(vec![("web1".into(), "GET /<script> 200".into())]),
            }),
            backups: Some(std::sync::Arc::new(Ok(vec![RepoInfo {
                repo: "demo/site".into(),
                bytes: 3 * 1024 * 1024,
                last_write: Some(now - Duration::from_secs(30)),
            }]))),
        }
    }

    #[test]
    fn the_page_shows_health_logs_and_backups() {
        let html = render(&overview());
        assert!(html.contains("<tr class=\"backend\" data-backend=\"web2\" data-state=\"down\">"));
        assert!(html.contains("<span class=\"state up\">● up</span>"));
        assert!(html.contains("2m 5s ago"));
        assert!(
            html.contains("connect: connection refused"),
            "why a down backend is down"
        );
        assert!(html.contains("1 of 2 backends up; 1 down: web2 (web)."));
        assert!(html.contains("<title>(down) gatehouse status</title>"));
        assert!(html.contains("<code>/demo/site</code></th><td class=\"num\">3.0 MiB</td><td><time"));
        assert!(html.contains("30s ago"));
        assert!(html.contains("Requests per second, last 1 min: now 4.00 req/s, peak 4.00 req/s"));
        assert!(html.contains("Mean latency, last 1 min: now 3.00 ms, peak 3.00 ms"));
        assert!(html.contains("<option selected>web2</option>"));
        // No external assets: nothing is loaded from another origin.
        for attr in ["src=\"http", "href=\"http", "url(", "@import"] {
            assert!(!html.contains(attr), "{attr} in the page");
        }
    }

    #[test]
    fn what_comes_from_outside_is_escaped() {
        let html = render(&overview());
        assert!(html.contains("<code>GET /&lt;script&gt; 200</code>"));
        assert!(html.contains("value=\"a&quot;&lt;b\""));
        assert!(!html.contains("<script> 200"));
        assert_eq!(escape("a\u{1b}[31mb"), "a\u{fffd}[31mb");
    }

    #[test]
    fn a_chart_breaks_where_nothing_was_measured() {
        let mut html = String::new();
        chart(
            &mut html,
            "x",
            "Mean latency",
            "ms",
            &[Some(1.0), None, Some(2.0), Some(2.0)],
            Duration::from_secs(60),
        );
        assert_eq!(html.matches("<polyline").count(), 2);
        assert!(html.contains("last 4 min: now 2.00 ms, peak 2.00 ms"));
        let mut empty = String::new();
        chart(
            &mut empty,
            "y",
            "Requests per second",
            "req/s",
            &[None, None],
            Duration::from_secs(2),
        );
        assert!(empty.contains("no data yet"));
        assert!(!empty.contains("<polyline"));
    }

    #[test]
    fn the_summary_names_what_is_down() {
        assert_eq!(summary(2, 2, &[]), "All 2 backends up.");
        assert_eq!(
            summary(1, 2, &[]),
            "1 of 2 backends up; the others are not checked yet."
        );
        assert_eq!(summary(0, 0, &[]), "No services configured.");
        let mut o = overview();
        o.logs = None;
        o.backups = None;
        let html = render(&o);
        assert!(html.contains("No [log_server] in the config."));
        assert!(html.contains("No [backup_server] in the config."));
    }
}
