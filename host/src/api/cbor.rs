//! The AWS CBOR 1.1 wire format (`application/x-amz-cbor-1.1`), which the Java
//! SDK v2 and the KCL speak to Kinesis by default. It carries the same
//! documents as JSON 1.1, with two differences: blobs (`Data`) are CBOR byte
//! strings instead of base64 text, and timestamps are epoch milliseconds
//! (tagged 1 by the SDK) instead of epoch seconds.
//!
//! The operations are written once, against JSON: a CBOR request is turned
//! into the JSON its operation reads, and the JSON answer into CBOR. Which
//! fields are blobs or timestamps is known by name, as in Kinesis's model: the
//! blobs are called `Data`, the timestamps end in `Timestamp`.

use base64::Engine as _;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Number, Value};

/// The content type of CBOR requests and answers.
pub const CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

/// Deepest nesting a request may have (Kinesis's documents are a few levels deep).
const MAX_DEPTH: usize = 32;

/// Why a CBOR document cannot be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("CBOR body is not valid: {0}")]
    Malformed(#[from] minicbor::decode::Error),
    #[error("CBOR body is not valid: {0}")]
    Unsupported(String),
}

/// A CBOR request body as the JSON document its operation reads. An empty
/// body stays empty (the operation reads it as `{}`).
pub fn to_json(body: &[u8]) -> Result<Vec<u8>, CborError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut decoder = Decoder::new(body);
    let value = read(&mut decoder, 0)?;
    if decoder.position() != body.len() {
        return Err(CborError::Unsupported(format!("{} bytes after the document", body.len() - decoder.position())));
    }
    serde_json::to_vec(&value).map_err(|e| CborError::Unsupported(e.to_string()))
}

fn unsupported(what: impl Into<String>) -> CborError {
    CborError::Unsupported(what.into())
}

/// One data item, recursively. Byte strings become base64 text and tag-1
/// timestamps (epoch milliseconds) epoch seconds, as JSON 1.1 carries them.
fn read(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CborError> {
    if depth > MAX_DEPTH {
        return Err(unsupported(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(match d.datatype()? {
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null | Type::Undefined => {
            d.skip()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Value::from(d.i64()?),
        Type::F16 | Type::F32 => float(f64::from(d.f32()?))?,
        Type::F64 => float(d.f64()?)?,
        Type::Bytes => Value::String(b64.encode(d.bytes()?)),
        Type::BytesIndef => {
            let mut bytes = Vec::new();
            for chunk in d.bytes_iter()? {
                bytes.extend_from_slice(chunk?);
            }
            Value::String(b64.encode(bytes))
        }
        Type::String | Type::StringIndef => Value::String(text(d)?),
        Type::Array | Type::ArrayIndef => {
            let len = d.array()?;
            let mut items = Vec::new();
            while more(d, len, items.len())? {
                items.push(read(d, depth + 1)?);
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map()?;
            let mut fields = Map::new();
            while more(d, len, fields.len())? {
                let key = match d.datatype()? {
                    Type::String | Type::StringIndef => text(d)?,
                    other => return Err(unsupported(format!("a map key is {other}, not text"))),
                };
                fields.insert(key, read(d, depth + 1)?);
            }
            Value::Object(fields)
        }
        Type::Tag => {
            let tag = d.tag()?;
            let value = read(d, depth + 1)?;
            if tag != Tag::new(1) {
                value
            } else if let Some(ms) = value.as_f64() {
                float(ms / 1000.0)?
            } else {
                return Err(unsupported("a timestamp (tag 1) is not a number"));
            }
        }
        other @ (Type::Int | Type::Simple | Type::Break | Type::Unknown(_)) => {
            return Err(unsupported(format!("{other} is not a value Kinesis takes")));
        }
    })
}

/// A text string, in one piece or in chunks.
fn text(d: &mut Decoder<'_>) -> Result<String, CborError> {
    if d.datatype()? == Type::String {
        return Ok(d.str()?.to_owned());
    }
    let mut text = String::new();
    for chunk in d.str_iter()? {
        text.push_str(chunk?);
    }
    Ok(text)
}

/// Whether an array or map has another item: counted for a definite length,
/// up to its break for an indefinite one.
fn more(d: &mut Decoder<'_>, len: Option<u64>, read: usize) -> Result<bool, CborError> {
    match len {
        Some(len) => Ok((read as u64) < len),
        None if d.datatype()? == Type::Break => {
            d.skip()?;
            Ok(false)
        }
        None => Ok(true),
    }
}

fn float(x: f64) -> Result<Value, CborError> {
    Number::from_f64(x).map(Value::Number).ok_or_else(|| unsupported("a number is not finite"))
}

/// A JSON answer as CBOR: `Data` text (base64) as a byte string, `...Timestamp`
/// numbers (epoch seconds) as tag 1 with epoch milliseconds.
pub fn from_json(json: &str) -> Vec<u8> {
    // Answers are made by weir's own serializer: they always parse.
    let value: Value = serde_json::from_str(json).unwrap_or_default();
    let mut e = Encoder::new(Vec::new());
    write_item(&mut e, None, &value).expect("writing to a Vec cannot fail");
    e.into_writer()
}

fn write_item(
    e: &mut Encoder<Vec<u8>>,
    key: Option<&str>,
    value: &Value,
) -> Result<(), minicbor::encode::Error<core::convert::Infallible>> {
    match value {
        Value::Null => e.null().map(drop),
        Value::Bool(b) => e.bool(*b).map(drop),
        Value::Number(n) if key.is_some_and(|k| k.ends_with("Timestamp")) => {
            let ms = (n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            e.tag(Tag::new(1))?.i64(ms).map(drop)
        }
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => e.u64(u).map(drop),
            (None, Some(i)) => e.i64(i).map(drop),
            _ => e.f64(n.as_f64().unwrap_or(0.0)).map(drop),
        },
        Value::String(s) if key == Some("Data") => match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(bytes) => e.bytes(&bytes).map(drop),
            Err(_) => e.str(s).map(drop),
        },
        Value::String(s) => e.str(s).map(drop),
        Value::Array(items) => {
            e.array(items.len() as u64)?;
            // An array's items are named by the array's field (`Records`, ...), which is never a blob or a timestamp.
            items.iter().try_for_each(|item| write_item(e, None, item))
        }
        Value::Object(fields) => {
            e.map(fields.len() as u64)?;
            fields.iter().try_for_each(|(k, v)| {
                e.str(k)?;
                write_item(e, Some(k), v)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(build: impl FnOnce(&mut Encoder<Vec<u8>>)) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        build(&mut e);
        e.into_writer()
    }

    #[test]
    fn a_request_reads_as_the_json_its_operation_takes() {
        // As the Java SDK writes them: indefinite maps, a byte-string blob, a tag-1 millisecond timestamp.
        let body = cbor(|e| {
            e.begin_map().expect("cbor");
            e.str("StreamName").expect("cbor").str("s").expect("cbor");
            e.str("Data").expect("cbor").bytes(b"hi").expect("cbor");
            e.str("Limit").expect("cbor").u32(25).expect("cbor");
            e.str("Timestamp").expect("cbor").tag(Tag::new(1)).expect("cbor").u64(1_700_000_000_123).expect("cbor");
            e.str("Records").expect("cbor").begin_array().expect("cbor").null().expect("cbor").end().expect("cbor");
            e.end().expect("cbor");
        });
        let json: Value = serde_json::from_slice(&to_json(&body).expect("cbor")).expect("cbor");
        assert_eq!(
            json,
            serde_json::json!({"StreamName": "s", "Data": "aGk=", "Limit": 25, "Timestamp": 1_700_000_000.123, "Records": [null]})
        );
    }

    #[test]
    fn an_answer_carries_blobs_as_bytes_and_timestamps_as_milliseconds() {
        let answer = r#"{"Records":[{"Data":"aGk=","ApproximateArrivalTimestamp":1700000000.123,"SequenceNumber":"49"}],"MillisBehindLatest":0}"#;
        let bytes = from_json(answer);
        // Fields come in name order.
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.map().expect("cbor"), Some(2));
        assert_eq!((d.str().expect("cbor"), d.u64().expect("cbor")), ("MillisBehindLatest", 0));
        assert_eq!((d.str().expect("cbor"), d.array().expect("cbor")), ("Records", Some(1)));
        assert_eq!(d.map().expect("cbor"), Some(3));
        assert_eq!((d.str().expect("cbor"), d.tag().expect("cbor")), ("ApproximateArrivalTimestamp", Tag::new(1)));
        assert_eq!(d.i64().expect("cbor"), 1_700_000_000_123);
        assert_eq!((d.str().expect("cbor"), d.bytes().expect("cbor")), ("Data", &b"hi"[..]));
        assert_eq!((d.str().expect("cbor"), d.str().expect("cbor")), ("SequenceNumber", "49"));
        // And back: the same document JSON 1.1 would carry.
        let json: Value = serde_json::from_slice(&to_json(&bytes).expect("cbor")).expect("cbor");
        assert_eq!(json, serde_json::from_str::<Value>(answer).expect("cbor"));
    }

    #[test]
    fn bad_documents_are_refused_not_panicked_on() {
        let deep = [vec![0x81u8; 100], vec![0x00]].concat();
        for (body, says) in [
            (vec![0xa1, 0x01, 0x02], "map key"),
            (vec![0xbf, 0x61, b'a'], "end of input"),
            (deep, "nested deeper"),
            (vec![0x00, 0x00], "after the document"),
            (vec![0xc1, 0x61, b'x'], "timestamp"),
            (vec![0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], "not finite"),
        ] {
            let e = to_json(&body).expect_err("refused").to_string();
            assert!(e.contains(says), "{body:x?}: {e}");
        }
    }
}
