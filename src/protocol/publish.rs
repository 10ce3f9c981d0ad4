//! The HTTP publish API's body (sans-io): `{"ch":...,"data":...}` or an
//! array of those, each with an optional `idempotency_key`, checked whole
//! before anything is published (a batch is all or nothing), and the JSON
//! answers.

use serde::Deserialize;
use serde_json::value::RawValue;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The channel (valid name).
    pub ch: Box<str>,
    /// The `data` value's JSON, byte for byte: the update's `data`.
    pub data: Box<[u8]>,
    /// A repeat of this key within the idempotency window publishes nothing
    /// and answers the first seq.
    pub key: Option<Box<str>>,
}

/// Why a publish body was refused, naming the first bad item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong.
    pub error: String,
    /// Index of the first bad item (0 for the body as a whole).
    pub index: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem<'a> {
    #[serde(borrow)]
    ch: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// Longest idempotency key accepted.
pub const KEY_MAX: usize = 256;

/// Parses and checks a publish body of at most `batch_max` messages.
///
/// # Errors
/// The first problem, with the index of its item.
pub fn parse_body(body: &[u8], batch_max: usize) -> Result<Vec<Item>, Refusal> {
    let refuse = |index, error: String| Refusal { error, index };
    let text = std::str::from_utf8(body).map_err(|_| refuse(0, "body is not UTF-8".into()))?;
    let first = text.trim_start().as_bytes().first().copied();
    let raws: Vec<&RawValue> = match first {
        Some(b'[') => {
            serde_json::from_str(text).map_err(|e| refuse(0, format!("malformed JSON: {e}")))?
        }
        Some(b'{') => vec![
            serde_json::from_str(text).map_err(|e| refuse(0, format!("malformed JSON: {e}")))?,
        ],
        _ => {
            return Err(refuse(
                0,
                "body must be a JSON object {\"ch\":...,\"data\":...} or an array of them".into(),
            ));
        }
    };
    if raws.is_empty() {
        return Err(refuse(0, "empty batch".into()));
    }
    if raws.len() > batch_max {
        return Err(refuse(
            batch_max,
            format!(
                "{} messages in one batch; the limit is {batch_max}",
                raws.len()
            ),
        ));
    }
    let mut items = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let item: RawItem<'_> = serde_json::from_str(raw.get())
            .map_err(|e| refuse(i, format!("not a {{\"ch\":...,\"data\":...}} object: {e}")))?;
        let ch: String = match item.ch.map(|c| serde_json::from_str::<String>(c.get())) {
            Some(Ok(c)) => c,
            _ => return Err(refuse(i, "missing string field ch".into())),
        };
        if !crate::channel::is_valid(ch.as_bytes()) {
            return Err(refuse(
                i,
                "invalid ch: need 1 to 128 bytes of A-Za-z0-9._:-".into(),
            ));
        }
        let Some(data) = item.data else {
            return Err(refuse(i, "missing field data".into()));
        };
        let key = match item
            .idempotency_key
            .map(|k| serde_json::from_str::<String>(k.get()))
        {
            None => None,
            Some(Ok(k)) if !k.is_empty() && k.len() <= KEY_MAX => Some(k.into_boxed_str()),
            Some(_) => {
                return Err(refuse(
                    i,
                    format!("idempotency_key must be a string of 1 to {KEY_MAX} bytes"),
                ));
            }
        };
        items.push(Item {
            ch: ch.into_boxed_str(),
            data: data.get().as_bytes().into(),
            key,
        });
    }
    Ok(items)
}

/// `{"error":"...","index":N}`.
pub fn refusal_body(r: &Refusal) -> Vec<u8> {
    serde_json::json!({"error": r.error, "index": r.index})
        .to_string()
        .into_bytes()
}

/// `{"results":[{"ch":"...","seq":N},...]}`, in request order.
pub fn results_body(results: &[(&str, u64)]) -> Vec<u8> {
    let mut out = String::with_capacity(16 + results.len() * 32);
    out.push_str("{\"results\":[");
    for (i, (ch, seq)) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Valid names need no escaping.
        out.push_str("{\"ch\":\"");
        out.push_str(ch);
        out.push_str("\",\"seq\":");
        out.push_str(itoa::Buffer::new().format(*seq));
        out.push('}');
    }
    out.push_str("]}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies_one_or_a_batch_all_checked_first() {
        let one = parse_body(br#"{"ch":"user:42","data":{"msg":"hi", "n": 1}}"#, 10).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(&*one[0].ch, "user:42");
        assert_eq!(
            &*one[0].data, br#"{"msg":"hi", "n": 1}"#,
            "data byte for byte"
        );
        let batch = parse_body(
            br#"[{"ch":"a","data":1},{"ch":"b","data":"x","idempotency_key":"k1"}]"#,
            10,
        )
        .unwrap();
        assert_eq!(batch[1].key.as_deref(), Some("k1"));
        let err = |b: &str, max| parse_body(b.as_bytes(), max).unwrap_err();
        assert_eq!(
            err(r#"[{"ch":"a","data":1},{"ch":"b c","data":1}]"#, 10).index,
            1
        );
        assert_eq!(err(r#"[{"ch":"a","data":1},{"ch":"b"}]"#, 10).index, 1);
        assert_eq!(err(r#"[{"data":1}]"#, 10).index, 0);
        assert_eq!(err(r#"[{"ch":"a","data":1,"x":2}]"#, 10).index, 0);
        assert!(err("[1,2", 10).error.starts_with("malformed JSON"));
        assert_eq!(err("[]", 10).error, "empty batch");
        assert_eq!(err("5", 10).index, 0);
        assert_eq!(
            err(r#"[{"ch":"a","data":1},{"ch":"a","data":1}]"#, 1).index,
            1
        );
        assert_eq!(
            err(r#"{"ch":"a","data":1,"idempotency_key":7}"#, 10).index,
            0
        );
        let v: serde_json::Value =
            serde_json::from_slice(&results_body(&[("a", 1), ("b", 7)])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"results":[{"ch":"a","seq":1},{"ch":"b","seq":7}]})
        );
    }
}
