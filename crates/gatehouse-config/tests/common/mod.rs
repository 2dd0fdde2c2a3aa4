//! What the config test files share: parse a farm, or its errors with their
//! `line:column`.

#![allow(dead_code)] // each test file uses its own subset

use gatehouse_config::{Diagnostics, Farm};

pub fn farm(text: &str) -> Farm {
    match Farm::parse("farm.toml", text) {
        Ok(farm) => farm,
        Err(d) => panic!("expected a valid farm, got:\n{}", d.render(false)),
    }
}

/// A farm read from a file at `path` (relative paths resolve against its directory).
pub fn farm_at(path: &str, text: &str) -> Farm {
    match Farm::parse(path, text) {
        Ok(farm) => farm,
        Err(d) => panic!("expected a valid farm, got:\n{}", d.render(false)),
    }
}

pub fn errors(text: &str) -> Diagnostics {
    match Farm::parse("farm.toml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d,
    }
}

/// The single error's message and `line:column`.
pub fn error(text: &str) -> (String, String) {
    let d = errors(text);
    assert_eq!(d.items.len(), 1, "expected one error, got:\n{}", d.render(false));
    let location = d.location(0).expect("error has a position");
    (
        d.items[0].message.clone(),
        location.trim_start_matches("farm.toml:").to_owned(),
    )
}

/// Line and column of the first occurrence of `needle` in `text`.
pub fn at(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}
