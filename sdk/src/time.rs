//! Time as plugins write it: RFC 3339 in UTC with milliseconds, computed
//! without a clock (plugins have none unless granted).

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of milliseconds since the epoch (UTC).
pub fn timestamp(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        let mut clock = String::new();
        push_clock(&mut clock, ms_of_day);
        return format!("{year:04}-{month:02}-{day:02}T{clock}Z");
    }
    // Digits written directly: results carry two timestamps each, and the
    // formatting machinery would cost more than the rest of an emit.
    let mut out = String::with_capacity(24);
    push_digits(&mut out, year, 4);
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_clock(&mut out, ms_of_day);
    out.push('Z');
    out
}

/// `HH:MM:SS.mmm` of a time of day.
fn push_clock(out: &mut String, ms_of_day: i64) {
    push_digits(out, ms_of_day / 3_600_000, 2);
    out.push(':');
    push_digits(out, ms_of_day / 60_000 % 60, 2);
    out.push(':');
    push_digits(out, ms_of_day / 1000 % 60, 2);
    out.push('.');
    push_digits(out, ms_of_day % 1000, 3);
}

/// The last `width` decimal digits of a non-negative `n`, zero-padded.
fn push_digits(out: &mut String, n: i64, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10_i64.pow(place) % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_701_600_000), "2026-11-26T14:00:00.000Z");
        assert_eq!(timestamp(1_795_478_399_999), "2026-11-23T23:59:59.999Z");
        assert_eq!(timestamp(1_796_083_199_999), "2026-11-30T23:59:59.999Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }
}
