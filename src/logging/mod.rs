//! Log output: the subscriber set up from `log_format` and `PGTENANT_LOG`, and the plain-text
//! and JSON line formats, each naming the connection a line is about ([`client::ClientLog`]).
//!
//! The plain lines read exactly like tracing-subscriber's default ("full") format (on a terminal
//! only the level is coloured), but are written directly: with a line at login and one at
//! logout, the default formatter's calendar arithmetic and styling machinery were the largest
//! part of what a new connection cost the proxy. Fields are written the same way: the default
//! field formatter runs every name and `=` through its styling code even with colour off.
//! Integers, plain strings and client addresses ([`PeerAddr`]) skip the formatting machinery
//! altogether: every connection and its two lines carry several. The JSON lines follow
//! tracing-subscriber's JSON layout.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::config::LogFormat;

pub mod batch;
pub mod client;

/// Installs the process's log subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(batch::BatchedStderr);
    batch::spawn_stderr_writer();
    batch::flush_before_panics();
    let _ = match format {
        // Colour only on a terminal: escape codes in log files are noise.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(PlainFields)
            .event_format(PlainLine)
            .try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .try_init(),
    };
}

/// `2026-12-01T17:52:45.465983Z  INFO client{id=2 peer=…}: pgtenant::session: message k=v`: the
/// connection the line is about ([`client::ClientLog`]), then any spans, then the target.
pub struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` crate record arrives as an event of tracing-log's; its own target and level
        // are in its fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str(Timestamp::now().as_str())?;
        if writer.has_ansi_escapes() {
            write!(writer, " {} ", Coloured(meta.level()))?;
        } else {
            writer.write_str(level(meta.level()))?;
        }
        let mut prefixed = false;
        if let Some(client) = client::current() {
            writer.write_str("client{")?;
            client.write_fields(&mut writer)?;
            writer.write_str("}:")?;
            prefixed = true;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
                prefixed = true;
            }
        }
        if prefixed {
            writer.write_char(' ')?;
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// A level in colour and padded to five characters, as tracing-subscriber writes it on a
/// terminal.
struct Coloured<'a>(&'a Level);

impl fmt::Display for Coloured<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let colour = match *self.0 {
            Level::TRACE => "35",
            Level::DEBUG => "34",
            Level::INFO => "32",
            Level::WARN => "33",
            Level::ERROR => "31",
        };
        write!(f, "\x1b[{colour}m{:>5}\x1b[0m", level(self.0).trim())
    }
}

/// One JSON object per line in tracing-subscriber's JSON layout (`timestamp`, `level`,
/// `fields`, `target`, the innermost span as `span` and all from the outermost as `spans`), the
/// connection the line is about ([`client::ClientLog`]) being the outermost span, `client`.
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        writer.write_str(Timestamp::now().as_str())?;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(level(meta.level()).trim())?;
        writer.write_str("\",\"fields\":")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        let client = client::current();
        let innermost = ctx.event_scope().and_then(|mut scope| scope.next());
        // Like tracing-subscriber's, a line outside any span has neither member.
        if innermost.is_none() && client.is_none() {
            return writer.write_str("}\n");
        }
        writer.write_str(",\"span\":")?;
        if let Some(span) = &innermost {
            write_json_span::<_, N>(&mut writer, span)?;
        } else if let Some(client) = &client {
            client.write_json(&mut writer)?;
        }
        writer.write_str(",\"spans\":[")?;
        let mut first = true;
        if let Some(client) = &client {
            client.write_json(&mut writer)?;
            first = false;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if !std::mem::take(&mut first) {
                    writer.write_char(',')?;
                }
                write_json_span::<_, N>(&mut writer, &span)?;
            }
        }
        writer.write_str("]}\n")
    }
}

/// A span as a JSON object: its fields (which the JSON field formatter `N` stored as an object)
/// and its name.
fn write_json_span<S, N>(out: &mut impl fmt::Write, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
    N: 'static,
{
    out.write_char('{')?;
    let extensions = span.extensions();
    let members = extensions
        .get::<FormattedFields<N>>()
        .map(|f| f.fields.trim())
        .and_then(|f| f.strip_prefix('{')?.strip_suffix('}'))
        .map(str::trim)
        .unwrap_or("");
    if !members.is_empty() {
        out.write_str(members)?;
        out.write_char(',')?;
    }
    out.write_str("\"name\":")?;
    write_json_str(out, span.name())?;
    out.write_char('}')
}

/// `name=value` fields separated by spaces, as tracing-subscriber's default field formatter
/// writes them without colour: values in their `Debug` form, the message bare (with terminal
/// control characters escaped), an error with its chain of sources.
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> PlainVisitor<'a> {
        PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one set of fields for [`PlainFields`].
pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// The space between fields.
    fn pad(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    /// Starts a field that is not the message: the space before it and `name=`. None for a field
    /// that is not written (the `log` crate's metadata, already in the line's target).
    fn start(&mut self, field: &Field) -> Option<fmt::Result> {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return None;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        Some(
            self.pad()
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('=')),
        )
    }

    /// An integer field, written without the formatting machinery (a login logs several).
    fn record_integer(&mut self, field: &Field, negative: bool, magnitude: u64) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{}{magnitude}", sign(negative)));
        }
        if let Some(started) = self.start(field) {
            self.result = started
                .and_then(|()| self.writer.write_str(sign(negative)))
                .and_then(|()| write_decimal(&mut self.writer, magnitude));
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_integer(field, false, value)
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_integer(field, value < 0, value.unsigned_abs())
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        if let Some(started) = self.start(field) {
            self.result = started.and_then(|()| write_debug_str(&mut self.writer, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => {
                let name = field.name();
                let sources = SourceList(source);
                self.record_debug(field, &format_args!("{value} {name}.sources={sources}"))
            }
            None => self.record_debug(field, &format_args!("{value}")),
        }
    }

    /// Every value reaches the line through [`EscapingWriter`]: a `%` field or an error's text
    /// may carry what a client sent (a database name with a line break in it).
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            if self.result.is_ok() {
                self.result = self
                    .pad()
                    .and_then(|()| write!(EscapingWriter(&mut self.writer), "{value:?}"));
            }
            return;
        }
        if let Some(started) = self.start(field) {
            self.result =
                started.and_then(|()| write!(EscapingWriter(&mut self.writer), "{value:?}"));
        }
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Writes through to `.0` with the control characters a log line must not carry escaped: line
/// breaks and the other C0 controls (a forged line would follow), DEL and the C1 range
/// (terminal escape sequences, as tracing-subscriber's own sanitising escapes them). Plain
/// lines read as tracing-subscriber's do but for line breaks and tabs, which it writes as they
/// are.
struct EscapingWriter<W>(W);

impl<W: fmt::Write> fmt::Write for EscapingWriter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Written as it is when no byte can start a control character (0xC2 leads every C1
        // character, and some others, which the loop writes unchanged).
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                '\x00'..='\x1f' | '\x7f' => write!(self.0, "\\x{:02x}", ch as u32)?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

/// An error and its sources as a list, each escaped.
struct SourceList<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&format_args!("{e}"));
            next = e.source();
        }
        list.finish()
    }
}

/// `value` as `{value:?}` writes it. `Debug` quotes a string and escapes quotes, backslashes and
/// what is not printable ASCII; a string with none of those is written quoted as it is.
fn write_debug_str(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.write_char('"')?;
        out.write_str(value)?;
        return out.write_char('"');
    }
    write!(out, "{value:?}")
}

/// `value` as a JSON string, quoted and escaped.
fn write_json_str(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?)
}

fn sign(negative: bool) -> &'static str {
    if negative { "-" } else { "" }
}

/// `value` in decimal, as `{value}` writes it.
fn write_decimal(out: &mut impl fmt::Write, mut value: u64) -> fmt::Result {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.write_str(std::str::from_utf8(&digits[at..]).unwrap_or("?"))
}

/// A client's address as a log field: the same text as `SocketAddr`'s `Display`, written
/// without the formatting machinery for IPv4 (every connection's span carries one).
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The address as `Display` writes it, straight to `out`.
    pub(crate) fn write_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return write!(out, "{}", self.0);
        };
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                out.write_char('.')?;
            }
            write_decimal(out, u64::from(octet))?;
        }
        out.write_char(':')?;
        write_decimal(out, u64::from(v4.port()))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_some() || f.precision().is_some() {
            return fmt::Display::fmt(&self.0, f);
        }
        self.write_to(f)
    }
}

fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

/// RFC 3339 UTC time with microseconds, as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
struct Timestamp([u8; 27]);

impl Timestamp {
    /// The time now.
    fn now() -> Timestamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        timestamp(now.as_secs(), now.subsec_micros())
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.0).unwrap_or("<unknown time>")
    }
}

fn timestamp(unix_secs: u64, micros: u32) -> Timestamp {
    let (year, month, day) = civil_from_days((unix_secs / 86_400) as i64);
    let secs_of_day = unix_secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, secs_of_day / 3600);
    put(14, 2, secs_of_day / 60 % 60);
    put(17, 2, secs_of_day % 60);
    put(20, 6, u64::from(micros.min(999_999)));
    Timestamp(out)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: eras of 400 years, years starting in March so leap days come last).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u64, day as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        for (secs, micros, expected) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
            (951_868_799, 999_999, "2000-02-29T23:59:59.999999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000Z"),
            (1_796_146_365, 465_983, "2026-12-01T17:32:45.465983Z"),
        ] {
            assert_eq!(timestamp(secs, micros).as_str(), expected);
        }
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut last = civil_from_days(-1);
        for days in 0..200_000 {
            let next = civil_from_days(days);
            let (y, m, d) = last;
            let expected = if next.2 == 1 {
                if m == 12 {
                    (y + 1, 1, 1)
                } else {
                    (y, m + 1, 1)
                }
            } else {
                (y, m, d + 1)
            };
            assert_eq!(next, expected, "day {days}");
            assert!(d <= 31);
            last = next;
        }
    }

    #[test]
    fn peer_addresses_read_as_socket_addresses_do() {
        for text in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "127.0.0.1:5432",
            "10.20.30.40:6432",
            "[::1]:6432",
            "[2001:db8::17]:1",
        ] {
            let addr: SocketAddr = text.parse().expect("address");
            assert_eq!(PeerAddr(addr).to_string(), addr.to_string());
            assert_eq!(format!("{:>24}", PeerAddr(addr)), format!("{addr:>24}"));
        }
    }

    /// An error with an optional source, for the error field format.
    #[derive(Debug)]
    struct Failure<'a>(&'static str, Option<&'a Failure<'a>>);

    impl fmt::Display for Failure<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure<'static> {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Which formatter writes the lines: tracing-subscriber's own (the connection as a span
    /// named `client`) or ours (the connection as a [`client::ClientLog`]).
    #[derive(Clone, Copy, PartialEq)]
    enum Formatter {
        Reference,
        Ours,
    }

    /// The lines of [`emit`], timestamps cut off, in the plain or JSON format.
    fn lines(formatter: Formatter, json: bool) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .with_writer(move || sink.clone());
        let run = || emit(formatter);
        match (formatter, json) {
            (Formatter::Ours, false) => {
                let builder = builder.fmt_fields(PlainFields).event_format(PlainLine);
                tracing::subscriber::with_default(builder.finish(), run)
            }
            (Formatter::Ours, true) => {
                let builder = builder.fmt_fields(JsonFields::new()).event_format(JsonLine);
                tracing::subscriber::with_default(builder.finish(), run)
            }
            (Formatter::Reference, false) => {
                tracing::subscriber::with_default(builder.finish(), run)
            }
            (Formatter::Reference, true) => {
                let builder = builder.json().with_current_span(true);
                tracing::subscriber::with_default(builder.finish(), run)
            }
        }
        let bytes = out.0.lock().expect("log capture").clone();
        let text = String::from_utf8(bytes).expect("log lines are UTF-8");
        if json {
            return text;
        }
        // Timestamps differ between the two runs.
        text.lines()
            .map(|l| &l[27..])
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines in a connection's scope (with a span inside it), after it and outside any.
    fn emit(formatter: Formatter) {
        let body = || {
            let inner = tracing::info_span!("checkout", slot = 3);
            let _h = inner.enter();
            tracing::warn!(waited_ms = 12, reason = ?"full", "pool \"busy\"");
            tracing::error!("no fields");
            static CAUSE: Failure<'static> = Failure("socket \x1b[31mgone\u{85}", None);
            static FAILURE: Failure<'static> = Failure("login failed", Some(&CAUSE));
            tracing::warn!(
                error = &FAILURE as &(dyn std::error::Error + 'static),
                alone = &CAUSE as &(dyn std::error::Error + 'static),
                r#type = "x",
                ok = true,
                ratio = 0.5,
                delta = -3i64,
                peer = %"10.0.0.1:5432",
                quoted = "a\"b\\c\nd",
                "message with \x07 bell, \x7f del, \u{9b} csi and \x1b escape, not é or \u{a0}"
            );
            tracing::info!(first = "only fields", second = 2);
            tracing::info!(
                big = u64::MAX,
                small = i64::MIN,
                zero = 0u64,
                text = "plain text: ~!",
                accent = "café",
                tab = "a\tb",
                off = false,
                peer = %PeerAddr("10.1.2.3:65535".parse().expect("address")),
                r#loop = 1u8,
                "a &str message"
            );
            tracing::info!(message = "message \x1b given as a str", n = 1);
        };
        let tenant = "acme \"co\"";
        match formatter {
            Formatter::Reference => {
                let span = tracing::info_span!("client", id = 7, peer = %"127.0.0.1:5000", tenant = tracing::field::Empty, user = tracing::field::Empty);
                span.record("tenant", tenant);
                span.record("user", "app");
                span.in_scope(body);
                span.in_scope(|| tracing::info!("client in scope, no other span"));
            }
            Formatter::Ours => {
                let log = client::ClientLog::new(7, "127.0.0.1:5000".parse().expect("address"));
                log.in_scope(|| client::record_names(Some(tenant), "app"));
                log.in_scope(body);
                log.in_scope(|| tracing::info!("client in scope, no other span"));
            }
        }
        tracing::info!(target: "pgtenant::server", end = "ClientLeft", "outside any span");
        // As rustls logs, through the `log` crate: the line names the record's own target.
        let record = log::Record::builder()
            .args(format_args!("from the log crate"))
            .level(log::Level::Warn)
            .target("rustls::conn")
            .module_path_static(Some("rustls::conn"))
            .file_static(Some("conn.rs"))
            .line(Some(7))
            .build();
        tracing_log::format_trace(&record).expect("dispatched");
        tracing::trace!("t");
        tracing::debug!("d");
    }

    #[test]
    fn json_lines_match_the_json_format_with_the_current_span() {
        let parse = |text: String| -> Vec<serde_json::Value> {
            text.lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                    v["timestamp"] = serde_json::Value::Null;
                    v
                })
                .collect()
        };
        let ours = parse(lines(Formatter::Ours, true));
        assert_eq!(ours, parse(lines(Formatter::Reference, true)));
        assert_eq!(ours.len(), 11);
        assert_eq!(ours[8]["target"], "rustls::conn");
        assert_eq!(ours[0]["span"]["name"], "checkout");
        assert_eq!(ours[0]["spans"][0]["tenant"], "acme \"co\"");
        assert_eq!(ours[0]["spans"][0]["user"], "app");
        assert_eq!(ours[0]["spans"][1]["slot"], 3);
        assert_eq!(ours[6]["span"]["id"], 7);
        assert_eq!(ours[6]["span"]["peer"], "127.0.0.1:5000");
        assert!(ours[7].get("span").is_none(), "{:?}", ours[7]);
    }

    #[test]
    fn a_terminal_gets_the_level_in_colour() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(true)
            .fmt_fields(PlainFields)
            .event_format(PlainLine)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("green");
            tracing::error!("red");
        });
        let text = String::from_utf8(out.0.lock().expect("log capture").clone()).expect("UTF-8");
        assert!(
            text.contains("Z \x1b[32m INFO\x1b[0m pgtenant::logging::tests: green\n"),
            "{text:?}"
        );
        assert!(
            text.contains("Z \x1b[31mERROR\x1b[0m pgtenant::logging::tests: red\n"),
            "{text:?}"
        );
    }

    #[test]
    fn what_a_client_sent_cannot_forge_a_line_in_either_format() {
        let forged = "x\n2026-12-01T00:00:00.000000Z  INFO pgtenant::session: forged\r\x1b[31m\x00";
        static CAUSE: Failure<'static> = Failure("db \"a\nb\"\x1b]0;t\x07", None);
        for json in [false, true] {
            let out = Captured::default();
            let sink = out.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || sink.clone());
            let emit = || {
                let log = client::ClientLog::new(1, "127.0.0.1:5000".parse().expect("address"));
                log.in_scope(|| client::record_names(Some(forged), forged));
                log.in_scope(|| {
                    tracing::warn!(
                        error = &CAUSE as &(dyn std::error::Error + 'static),
                        tenant = %forged,
                        database = ?forged,
                        "login failed for {forged}"
                    )
                });
            };
            if json {
                let b = builder.fmt_fields(JsonFields::new()).event_format(JsonLine);
                tracing::subscriber::with_default(b.finish(), emit);
            } else {
                let b = builder.fmt_fields(PlainFields).event_format(PlainLine);
                tracing::subscriber::with_default(b.finish(), emit);
            }
            let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("UTF-8");
            assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
            assert!(
                !text.bytes().any(|b| b < 0x20 && b != b'\n'),
                "no control characters: {text:?}"
            );
            if json {
                let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(v["fields"]["tenant"], forged);
                assert_eq!(v["span"]["tenant"], forged);
            } else {
                assert!(
                    text.contains("for x\\n2026-12-01T00:00:00.000000Z  INFO"),
                    "{text}"
                );
                assert!(text.contains("error=db \"a\\nb\"\\x1b]0;t\\x07"), "{text}");
                assert!(text.contains("forged\\r\\x1b[31m\\x00"), "{text}");
            }
        }
    }

    #[test]
    fn plain_lines_match_the_default_format_without_colour() {
        let ours = lines(Formatter::Ours, false);
        assert_eq!(ours, lines(Formatter::Reference, false));
        assert!(
            ours.contains(
                "  WARN client{id=7 peer=127.0.0.1:5000 tenant=\"acme \\\"co\\\"\" user=\"app\"}:checkout{slot=3}: "
            ),
            "{ours}"
        );
        assert!(
            ours.contains(
                "  INFO client{id=7 peer=127.0.0.1:5000 tenant=\"acme \\\"co\\\"\" user=\"app\"}: \
                 pgtenant::logging::tests: client in scope, no other span"
            ),
            "{ours}"
        );
        assert!(
            ours.contains(
                "error=login failed error.sources=[socket \\x1b[31mgone\\u{85}] \
                 alone=socket \\x1b[31mgone\\u{85} type=\"x\" ok=true ratio=0.5 delta=-3 \
                 peer=10.0.0.1:5432 quoted=\"a\\\"b\\\\c\\nd\""
            ),
            "{ours}"
        );
        assert!(
            ours.contains("\\x07 bell, \\x7f del, \\u{9b} csi and \\x1b escape, not é or \u{a0}"),
            "{ours}"
        );
        assert!(
            ours.contains(
                "big=18446744073709551615 small=-9223372036854775808 zero=0 \
                 text=\"plain text: ~!\" accent=\"café\" tab=\"a\\tb\" off=false \
                 peer=10.1.2.3:65535 loop=1"
            ),
            "{ours}"
        );
        assert!(ours.contains("message \\x1b given as a str n=1"), "{ours}");
        assert!(
            ours.contains("  WARN rustls::conn: from the log crate\n"),
            "{ours}"
        );
        assert_eq!(ours.lines().count(), 11);
    }
}
