//! Result sets for the console: every column is text, as pgbouncer's console does, which is
//! all psql needs to print a table.

use bytes::{BufMut, BytesMut};

use crate::protocol::messages::write_message;

/// The text type's OID.
const TEXT_OID: i32 = 25;

/// Writes RowDescription, one DataRow per row and CommandComplete `tag`.
pub fn write(out: &mut BytesMut, columns: &[&str], rows: &[Vec<String>], tag: &str) {
    write_message(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for name in columns {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(0); // table OID
            b.put_i16(0); // column number
            b.put_i32(TEXT_OID);
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
    for row in rows {
        write_message(out, b'D', |b| {
            b.put_i16(row.len() as i16);
            for cell in row {
                b.put_i32(cell.len() as i32);
                b.put_slice(cell.as_bytes());
            }
        });
    }
    complete(out, tag);
}

/// CommandComplete.
pub fn complete(out: &mut BytesMut, tag: &str) {
    write_message(out, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_set_is_well_framed() {
        let mut out = BytesMut::new();
        write(
            &mut out,
            &["a", "b"],
            &[vec!["1".into(), "x".into()]],
            "SHOW",
        );
        let mut tags = Vec::new();
        let mut rest = &out[..];
        while let [tag, a, b, c, d, ..] = rest {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            tags.push(*tag);
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"TDC");
    }
}
