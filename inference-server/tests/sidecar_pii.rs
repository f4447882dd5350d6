//! The shipped `pii` task through the real sidecar and base model: the
//! deterministic recognizers alone (no head installed).

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use sidecar_common::*;
use vsr_proto::v1 as pb;

/// Every span's char offsets and byte offsets cut out the same text.
fn check_offsets(text: &str, es: &[pb::EntitySpan]) {
    for e in es {
        let by_chars: String = text
            .chars()
            .skip(e.start as usize)
            .take((e.end - e.start) as usize)
            .collect();
        let by_bytes = &text[e.byte_start as usize..e.byte_end as usize];
        assert_eq!(by_chars, by_bytes, "{e:?} in {text:?}");
    }
}

fn find<'a>(text: &str, es: &'a [pb::EntitySpan], kind: &str, piece: &str) -> &'a pb::EntitySpan {
    es.iter()
        .find(|e| e.r#type == kind && &text[e.byte_start as usize..e.byte_end as usize] == piece)
        .unwrap_or_else(|| panic!("no {kind} {piece:?} in {text:?}: {es:?}"))
}

#[tokio::test]
async fn pii_without_a_head_answers_from_the_recognizers() {
    let empty = tempfile::tempdir().unwrap();
    let s = start(config(empty.path())).await;
    let mut c = client(&s).await;
    let text = "My SSN is 078-05-1120";
    let r = c.classify(pii_request(text)).await.unwrap().into_inner();
    let es = entities(&r.results[0]);
    assert_eq!(es.len(), 1, "{es:?}");
    let e = &es[0];
    assert_eq!(
        (e.r#type.as_str(), e.source.as_str()),
        ("US_SSN", "pattern")
    );
    assert_eq!((e.start, e.end, e.byte_start, e.byte_end), (10, 21, 10, 21));
    // Nothing went to the model.
    assert_eq!(r.timing.unwrap().inference_us, 0);

    // Non-ASCII before the spans: char and byte offsets differ.
    let text = "Grüße aus Köln — schreib an anna@example.de, Karte 4111 1111 1111 1111.";
    let r = c
        .classify(pb::ClassifyRequest {
            text: "hello".into(),
            tasks: vec!["pii".into()],
            extra_texts: vec![pb::ExtraText {
                text: text.into(),
                tasks: vec!["pii".into()],
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(entities(&r.results[0]).is_empty());
    let es = entities(&r.extra_results[0].results[0]);
    check_offsets(text, es);
    let mail = find(text, es, "EMAIL_ADDRESS", "anna@example.de");
    assert_eq!(
        mail.start as usize,
        text[..mail.byte_start as usize].chars().count()
    );
    assert!(
        mail.byte_start > mail.start,
        "multi-byte chars before the span"
    );
    find(text, es, "CREDIT_CARD", "4111 1111 1111 1111");
    s.shutdown().await.unwrap();
}
