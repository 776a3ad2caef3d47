//! Object keys of the lake: the time partition after a delivery's prefix, or
//! the prefix's Firehose expressions, and the check of those expressions.

/// The key prefix of an object delivered at `ms` (UTC). A prefix without
/// expressions gets `YYYY/MM/DD/HH/` appended, as in Firehose; one with
/// expressions is expanded instead: `!{timestamp:PATTERN}` (tokens `yyyy`,
/// `MM`, `dd`, `HH`, `mm`, `ss`; anything else is literal) and
/// `!{firehose:error-output-type}`. Only deterministic expressions exist, so a
/// redone delivery gets the same keys.
pub fn object_prefix(prefix: &str, ms: i64, error_type: Option<&str>) -> String {
    // RFC 3339: 2026-11-26T14:03:12.345Z
    let t = crate::time::format_ms(ms);
    let (year, month, day, hour, minute, second) = (&t[0..4], &t[5..7], &t[8..10], &t[11..13], &t[14..16], &t[17..19]);
    if !prefix.contains("!{") {
        return format!("{prefix}{year}/{month}/{day}/{hour}/");
    }
    let mut out = String::new();
    let mut rest = prefix;
    while let Some(start) = rest.find("!{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expression = &rest[start + 2..start + end];
        match expression.split_once(':') {
            Some(("timestamp", pattern)) => {
                out.push_str(
                    &pattern
                        .replace("yyyy", year)
                        .replace("MM", month)
                        .replace("dd", day)
                        .replace("HH", hour)
                        .replace("mm", minute)
                        .replace("ss", second),
                );
            }
            Some(("firehose", "error-output-type")) => out.push_str(error_type.unwrap_or("")),
            _ => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks the expressions of a prefix; the error says what is allowed.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let mut rest = prefix;
    while let Some(start) = rest.find("!{") {
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("`{}` is not closed with `}}`", &rest[start..]));
        };
        let expression = &rest[start + 2..start + end];
        match expression.split_once(':') {
            Some(("timestamp", pattern)) if !pattern.is_empty() => {}
            Some(("firehose", "error-output-type")) => {}
            _ => {
                return Err(format!(
                    "`!{{{expression}}}` is not supported: use !{{timestamp:yyyy/MM/dd/HH}} (tokens yyyy MM dd HH mm ss) or !{{firehose:error-output-type}}"
                ));
            }
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_partitioned_by_hour_in_utc_or_by_the_prefix_expressions() {
        let ms = crate::time::system_ms(humantime::parse_rfc3339("2026-11-26T14:03:12Z").expect("time"));
        assert_eq!(object_prefix("rows/", ms, None), "rows/2026/11/26/14/");
        assert_eq!(
            object_prefix("rows/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/", ms, None),
            "rows/year=2026/month=11/day=26/"
        );
        assert_eq!(object_prefix("t=!{timestamp:HH-mm-ss}/", ms, None), "t=14-03-12/");
        assert_eq!(
            object_prefix(
                "errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/",
                ms,
                Some("processing-failed")
            ),
            "errors/processing-failed/2026/11/26/"
        );
        assert_eq!(check_prefix("rows/!{timestamp:yyyy}/"), Ok(()));
        let err = check_prefix("rows/!{firehose:random-string}/").expect_err("random keys would not be deterministic");
        assert!(err.contains("is not supported"), "{err}");
        assert!(check_prefix("rows/!{timestamp:yyyy").is_err());
    }
}
