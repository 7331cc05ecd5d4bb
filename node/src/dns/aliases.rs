//! Aliases: short names for zones, from a file and `NAME=ZONE` flags.

use super::*;

/// Loads aliases from an optional file and `NAME=ZONE` flags.
///
/// File format: one alias per line, `NAME ZONE` or `NAME=ZONE`; blank lines and lines starting
/// with `#` are ignored. NAME is one DNS label (`a-z0-9-`, case-insensitive) and must not look
/// like a zone id; ZONE is a 52-character zone id. Defining one NAME twice with different zones
/// is an error rather than a silent override: an alias pointing somewhere unexpected is exactly
/// the kind of quiet misdirection dpin exists to prevent.
pub fn load_aliases(
    file: Option<&Path>,
    flags: &[String],
) -> Result<BTreeMap<String, ZoneId>, DnsError> {
    let mut out = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::AliasFile {
            path: path.to_owned(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, zone) = line
                .split_once('=')
                .or_else(|| line.split_once(char::is_whitespace))
                .ok_or_else(|| {
                    DnsError::BadAlias(format!("{:?} at {}:{}", line, path.display(), i + 1))
                })?;
            add_alias(
                &mut out,
                name,
                zone,
                &format!("{}:{}", path.display(), i + 1),
            )?;
        }
    }
    for flag in flags {
        let (name, zone) = flag
            .split_once('=')
            .ok_or_else(|| DnsError::BadAlias(format!("{flag:?}")))?;
        add_alias(&mut out, name, zone, "--alias")?;
    }
    Ok(out)
}

fn add_alias(
    out: &mut BTreeMap<String, ZoneId>,
    name: &str,
    zone: &str,
    origin: &str,
) -> Result<(), DnsError> {
    let name = name.trim().to_ascii_lowercase();
    let zone_text = zone.trim();
    let bad = |why: &str| DnsError::BadAlias(format!("{name:?}={zone_text:?} ({origin}): {why}"));
    if !label_ok(name.as_bytes()) {
        return Err(bad("NAME must be one DNS label of a-z, 0-9 and -"));
    }
    if zone_shaped(name.as_bytes()) {
        return Err(bad("NAME must not look like a zone id"));
    }
    if name.as_bytes() == ADDR_LABEL {
        return Err(bad("`addr` is reserved for SRV targets (HEX.addr.dpin.)"));
    }
    let zone: ZoneId = zone_text
        .parse()
        .map_err(|_| bad("ZONE is not a 52-character zone id"))?;
    match out.get(&name) {
        Some(existing) if *existing != zone => Err(bad("NAME already points to another zone")),
        _ => {
            out.insert(name, zone);
            Ok(())
        }
    }
}
