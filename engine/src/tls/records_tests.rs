//! The record layer on its own: each suite both ways, and every check a received record
//! passes (authentication, sequence, length, content type, close_notify, the key limit).

use super::*;
use crate::tls::TunnelTls;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Suite {
    Aes128,
    Aes256,
    Chacha,
}

const SUITES: [Suite; 3] = [Suite::Aes128, Suite::Aes256, Suite::Chacha];

fn algorithm(suite: Suite) -> &'static ring::aead::Algorithm {
    match suite {
        Suite::Aes128 => &ring::aead::AES_128_GCM,
        Suite::Aes256 => &ring::aead::AES_256_GCM,
        Suite::Chacha => &ring::aead::CHACHA20_POLY1305,
    }
}

/// A direction's key and IV, different per `seed`.
fn key_iv(suite: Suite, seed: u8) -> (Vec<u8>, [u8; 12]) {
    let key = (0..algorithm(suite).key_len())
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    (key, [seed ^ 0x5a; 12])
}

/// Two ends whose keys match (one's tx is the other's rx), starting at sequence `seq`.
fn ends(suite: Suite, seq: u64, limit: u64) -> (RecordLayer, RecordLayer) {
    let (k1, iv1) = key_iv(suite, 1);
    let (k2, iv2) = key_iv(suite, 2);
    let alg = algorithm(suite);
    (
        RecordLayer::from_keys(alg, (seq, &k1, &iv1), (seq, &k2, &iv2), limit).unwrap(),
        RecordLayer::from_keys(alg, (seq, &k2, &iv2), (seq, &k1, &iv1), limit).unwrap(),
    )
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn seal(end: &mut RecordLayer, data: &[u8]) -> BytesMut {
    BytesMut::from(&end.seal([Bytes::copy_from_slice(data)]).unwrap().unwrap()[..])
}

#[test]
fn every_suite_round_trips_both_ways_from_any_sequence_number() {
    for suite in SUITES {
        for seq in [0, 3, u64::from(u32::MAX) + 7] {
            let (mut a, mut b) = ends(suite, seq, u64::MAX);
            let data = pattern(100_000);
            let mut wire = seal(&mut a, &data);
            // Full records of 2^14 bytes and their overhead.
            assert_eq!(
                wire.len(),
                data.len() + data.len().div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD
            );
            assert_eq!(&wire[..3], &[0x17, 0x03, 0x03], "{suite:?}");
            let mut plain = BytesMut::new();
            b.open(&mut wire, &mut plain).unwrap();
            assert!(wire.is_empty());
            assert_eq!(&plain[..], &data[..], "{suite:?} seq {seq}");
            let mut back = seal(&mut b, b"the other way");
            let mut got = BytesMut::new();
            a.open(&mut back, &mut got).unwrap();
            assert_eq!(&got[..], b"the other way");
            assert_eq!(a.sequence_numbers(), (seq + 7, seq + 1));
        }
    }
}

#[test]
fn chunks_are_packed_across_records() {
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let chunks: Vec<Bytes> = (0..40)
        .map(|i| Bytes::from(pattern(1000 + i * 13)))
        .collect();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut wire = BytesMut::from(&a.seal(chunks).unwrap().unwrap()[..]);
    assert_eq!(
        wire.len(),
        all.len() + all.len().div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD
    );
    let mut plain = BytesMut::new();
    b.open(&mut wire, &mut plain).unwrap();
    assert_eq!(&plain[..], &all[..]);
    assert!(a.seal([Bytes::new()]).unwrap().is_none(), "nothing to seal");
}

#[test]
fn one_flipped_bit_anywhere_fails_the_record() {
    for suite in SUITES {
        let data = pattern(3000);
        for at in [5, 6, 100, 3000, 3000 + 5 + 1 + 15] {
            let (mut a, mut b) = ends(suite, 0, u64::MAX);
            let mut wire = seal(&mut a, &data);
            wire[at] ^= 0x01;
            let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
            assert!(
                matches!(err, TlsError::Tampered),
                "{suite:?} at {at}: {err}"
            );
            // And the layer stays failed.
            let mut next = seal(&mut a, b"more");
            assert!(b.open(&mut next, &mut BytesMut::new()).is_err());
        }
    }
}

#[test]
fn a_tampered_header_fails() {
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let mut wire = seal(&mut a, b"hello");
    wire[0] = 0x16;
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let mut wire = seal(&mut a, b"hello");
    wire[2] = 0x01;
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
}

#[test]
fn a_record_out_of_sequence_fails() {
    for suite in SUITES {
        let (mut a, mut b) = ends(suite, 0, u64::MAX);
        let _skipped = seal(&mut a, b"first");
        let mut second = seal(&mut a, b"second");
        let err = b.open(&mut second, &mut BytesMut::new()).unwrap_err();
        assert!(matches!(err, TlsError::Tampered), "{suite:?}: {err}");
        // A replayed record fails the same way.
        let (mut a, mut b) = ends(suite, 0, u64::MAX);
        let first = seal(&mut a, b"first");
        b.open(&mut first.clone(), &mut BytesMut::new()).unwrap();
        let err = b
            .open(&mut first.clone(), &mut BytesMut::new())
            .unwrap_err();
        assert!(matches!(err, TlsError::Tampered), "{suite:?}: {err}");
    }
}

#[test]
fn an_oversize_record_fails_from_its_header() {
    let (_, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let len = (MAX_CIPHERTEXT + 1) as u16;
    let mut wire = BytesMut::from(&[0x17, 0x03, 0x03, (len >> 8) as u8, len as u8][..]);
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
    // A record too short to hold its tag.
    let (_, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let mut wire = BytesMut::from(&[0x17, 0x03, 0x03, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10][..]);
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
    // An authentic record with more than 2^14 bytes inside.
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let mut wire = BytesMut::from(&a.seal_inner(&pattern(MAX_PLAINTEXT + 1), 0x17)[..]);
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
}

#[test]
fn content_types_other_than_data_end_the_connection() {
    // A handshake message (KeyUpdate, NewSessionTicket), a warning alert, an unknown type.
    for (data, kind) in [
        (&[24u8, 0, 0, 1, 0][..], 0x16u8),
        (&[1, 90][..], 0x15),
        (&b"x"[..], 0x18),
    ] {
        let (mut a, mut b) = ends(Suite::Aes256, 0, u64::MAX);
        let mut wire = BytesMut::from(&a.seal_inner(data, kind)[..]);
        let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
        assert!(
            matches!(err, TlsError::UnexpectedRecord(_) | TlsError::BadRecord(_)),
            "{kind}: {err}"
        );
    }
    // All padding, no content type.
    let (mut a, mut b) = ends(Suite::Aes256, 0, u64::MAX);
    let mut wire = BytesMut::from(&a.seal_inner(&[0, 0, 0], 0)[..]);
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::BadRecord(_)), "{err}");
}

#[test]
fn padding_after_the_content_type_is_removed() {
    let (mut a, mut b) = ends(Suite::Chacha, 0, u64::MAX);
    let mut inner = b"padded".to_vec();
    inner.push(0x17);
    inner.extend_from_slice(&[0; 40]);
    // seal_inner appends a zero as the last "type": all of it is padding after our 0x17.
    let mut wire = BytesMut::from(&a.seal_inner(&inner, 0)[..]);
    let mut plain = BytesMut::new();
    b.open(&mut wire, &mut plain).unwrap();
    assert_eq!(&plain[..], b"padded");
}

#[test]
fn close_notify_is_an_orderly_close() {
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let mut wire = BytesMut::from(&a.seal_alert(0)[..]);
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, TlsError::PeerClosed), "{err}");
}

#[test]
fn a_key_seals_no_more_than_its_limit_and_opens_no_more() {
    let (mut a, mut b) = ends(Suite::Aes128, 0, 3);
    let mut wire = seal(&mut a, &pattern(2 * MAX_PLAINTEXT));
    b.open(&mut wire, &mut BytesMut::new()).unwrap();
    // Two more records would pass the limit of 3: refused before sealing anything.
    let err = a
        .seal([Bytes::from(pattern(MAX_PLAINTEXT + 1))])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::KeyLimit {
                records: 2,
                limit: 3
            }
        ),
        "{err}"
    );
    assert!(
        a.seal([Bytes::from_static(b"x")]).is_err(),
        "and stays refused"
    );
    // A peer that ignores the limit is refused at the other end.
    let (mut a, _) = ends(Suite::Aes128, 0, u64::MAX);
    let (_, mut b) = ends(Suite::Aes128, 0, 1);
    let mut wire = seal(&mut a, &pattern(MAX_PLAINTEXT + 1));
    let err = b.open(&mut wire, &mut BytesMut::new()).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::KeyLimit {
                records: 1,
                limit: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn plaintext_joins_the_partial_frame_before_it_without_a_copy() {
    let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
    let (mut received, mut plain) = (BytesMut::new(), BytesMut::new());
    let mut wire = seal(&mut a, &pattern(50_000));
    let second = seal(&mut a, b"and then this");
    wire.extend_from_slice(&second);
    // All but the last 10 bytes arrive.
    TunnelTls::reserve_receive(&mut received, &mut plain, 1 << 20);
    received.extend_from_slice(&wire[..wire.len() - 10]);
    b.open(&mut received, &mut plain).unwrap();
    assert_eq!(plain.len(), 50_000);
    assert_eq!(
        received.len(),
        second.len() - 10,
        "the partial record stays"
    );
    // The session keeps a partial frame; the rest arrives.
    let _consumed = plain.split_to(49_000);
    let kept_at = plain.as_ptr();
    received.extend_from_slice(&wire[wire.len() - 10..]);
    b.open(&mut received, &mut plain).unwrap();
    assert_eq!(plain.as_ptr(), kept_at, "joined in place");
    assert_eq!(&plain[1000..], b"and then this");
    assert!(received.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Records split across reads at arbitrary points, with the session taking arbitrary
    /// amounts in between: every byte arrives once, in order.
    #[test]
    fn records_split_across_reads_arrive_whole(
        sizes in proptest::collection::vec(1usize..40_000, 1..6),
        cuts in proptest::collection::vec(1usize..20_000, 1..40),
        takes in proptest::collection::vec(0usize..30_000, 1..40),
        room in proptest::bool::ANY,
    ) {
        let (mut a, mut b) = ends(Suite::Aes128, 0, u64::MAX);
        let mut data = Vec::new();
        let mut wire = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let part = pattern(*size + i);
            wire.extend_from_slice(&a.seal([Bytes::from(part.clone())]).unwrap().unwrap());
            data.extend_from_slice(&part);
        }
        let (mut received, mut plain) = (BytesMut::new(), BytesMut::new());
        let mut delivered = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            if room {
                TunnelTls::reserve_receive(&mut received, &mut plain, n);
            }
            received.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            b.open(&mut received, &mut plain).unwrap();
            prop_assert!(received.len() < HEADER_LEN + MAX_CIPHERTEXT);
            let take = takes[i % takes.len()].min(plain.len());
            delivered.extend_from_slice(&plain.split_to(take));
            i += 1;
        }
        delivered.extend_from_slice(&plain);
        prop_assert!(received.is_empty());
        prop_assert_eq!(delivered, data);
    }
}
