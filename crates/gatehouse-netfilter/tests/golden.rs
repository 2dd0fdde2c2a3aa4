//! Ruleset generation against golden files, and the golden files against the
//! real tools: every nft ruleset loads into a scratch network namespace and
//! lists back as written; every iptables export passes `iptables-restore --test`.
//!
//! After an intended change: `GATEHOUSE_BLESS=1 cargo test -p gatehouse-netfilter
//! --test golden`, then read the diff of tests/golden/ before committing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gatehouse_config::Farm;
use gatehouse_netfilter::plan::{self, LiveMaps};
use gatehouse_netfilter::{apply, diff, iptables, live};

fn cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cases = vec![("seed-farm".to_owned(), dir.join("../../examples/seed-farm.toml"))];
    let mut golden: Vec<PathBuf> = std::fs::read_dir(dir.join("tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    golden.sort();
    for path in golden {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        cases.push((name, path));
    }
    cases
}

fn farm(path: &Path) -> Farm {
    Farm::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nft_text(path: &Path) -> String {
    apply::definition(&farm(path), None).1
}

fn iptables_text(path: &Path) -> String {
    let ruleset = plan::ruleset(&farm(path), &LiveMaps::new());
    let name = path.file_name().unwrap().to_string_lossy();
    iptables::render(&ruleset, &["10.0.0.0/24".parse().unwrap()], &name)
        .unwrap()
        .text
}

/// Maps with thousands of slots are summarised: the slot tables have their
/// own unit tests, and a 65,537-line golden file would hide everything else.
fn abbreviate(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("elements = {") {
            let mut block = line.to_owned();
            while !block.trim_end().ends_with('}') {
                block.push('\n');
                block.push_str(lines.next().unwrap());
            }
            let slots = block.matches(" : ").count();
            if slots > 64 {
                out.push_str(&format!("\t\telements = {{ ... {slots} slots ... }}\n"));
                continue;
            }
            out.push_str(&block);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn compare(golden: &Path, actual: &str) {
    if std::env::var_os("GATEHOUSE_BLESS").is_some() {
        std::fs::write(golden, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(golden)
        .unwrap_or_else(|_| panic!("{} is missing: run with GATEHOUSE_BLESS=1", golden.display()));
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "generated")
            .to_string();
        panic!("{} differs from the generated ruleset:\n{diff}", golden.display());
    }
}

fn golden_path(name: &str, extension: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.{extension}"))
}

#[test]
fn nft_rulesets_match_golden_files() {
    for (name, path) in cases() {
        compare(&golden_path(&name, "nft"), &abbreviate(&nft_text(&path)));
    }
}

#[test]
fn iptables_exports_match_golden_files() {
    for (name, path) in cases() {
        compare(&golden_path(&name, "iptables"), &iptables_text(&path));
    }
}

/// nft accepts every generated ruleset, and lists it back exactly as we wrote
/// it (map elements aside, which nft wraps its own way): what `plan` shows is
/// what the kernel holds.
#[test]
fn nft_loads_every_ruleset_and_lists_it_back_as_written() {
    for (name, path) in cases() {
        let ours = nft_text(&path);
        let listed = diff::canonical_listing(&ours).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // Element blocks are wrapped differently by nft; slots are compared below.
        let strip = live::without_elements;
        assert_eq!(
            strip(&listed),
            strip(&ours),
            "{name}: nft lists the ruleset differently"
        );
        assert_eq!(
            listed.matches(" : ").count(),
            ours.matches(" : ").count(),
            "{name}: slot count"
        );
    }
}

#[test]
fn iptables_restore_accepts_every_export() {
    for (name, path) in cases() {
        let text = iptables_text(&path);
        // A scratch network namespace, so --test never meets the host's tables.
        let mut child = Command::new("unshare")
            .args(["--net", "--", "iptables-restore", "--test"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running unshare iptables-restore (needs root and the iptables package)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{name}: iptables-restore --test refused the export:\n{}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A proxy service's `redirect_http` port is opened like its listener.
/// (Not a golden file: redirect_http needs a certificate, which expires.)
#[test]
fn a_redirect_port_is_opened_in_input() {
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\n\n[[service]]\nname = \"sites\"\nlisten = \"443\"\n\
                mode = \"http\"\nbackends = [\"10.0.0.21:80\"]\n";
    let mut farm = Farm::parse("redirect.toml", text).expect("valid");
    let listen = gatehouse_config::Listen { addr: None, port: 80 };
    farm.services[0].redirect_http = Some(gatehouse_config::Located::new(listen, 0..0));
    let nft = apply::definition(&farm, None).1;
    assert!(
        nft.contains("tcp dport 443 accept comment \"service sites\""),
        "{nft}"
    );
    assert!(
        nft.contains("tcp dport 80 accept comment \"service sites redirect_http\""),
        "{nft}"
    );
}
