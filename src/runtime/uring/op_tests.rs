//! Tests of the `user_data` encoding: every op, slot index and generation comes back as it
//! went in, the fields never spill into each other, generations wrap, unknown ops are errors.

use super::*;

#[test]
fn every_op_index_and_generation_round_trips() {
    let idxs = [
        0,
        1,
        2,
        255,
        256,
        1 << 24,
        (1 << 31) + 7,
        IDX_MAX - 1,
        IDX_MAX,
    ];
    let gens = [0, 1, 2, 255, 256, 0x7f_ffff, Gen::MAX.0 - 1, Gen::MAX.0];
    for op in Op::ALL {
        for idx in idxs {
            for g in gens {
                let key = SlotKey::new(idx, Gen::new(g));
                let u = key.user_data(op);
                let (op2, key2) = decode(u).expect("a known op");
                assert_eq!((op2, key2), (op, key), "{u:#018x}");
                assert_eq!(key2.idx(), idx, "{u:#018x}");
                assert_eq!(key2.generation(), Gen::new(g), "{u:#018x}");
            }
        }
    }
}

/// The bit layout the module doc draws: op in bits 0..8, generation in 8..32, index in
/// 32..64.
#[test]
fn the_fields_sit_where_the_layout_says() {
    assert_eq!(SlotKey::new(0, Gen::new(0)).user_data(Op::Recv), 1);
    assert_eq!(
        SlotKey::new(0, Gen::MAX).user_data(Op::EventFdPoll),
        0x0000_0000_ffff_ff0a
    );
    assert_eq!(
        SlotKey::new(IDX_MAX, Gen::new(0)).user_data(Op::Accept),
        0xffff_ffff_0000_0007
    );
    assert_eq!(
        SlotKey::new(IDX_MAX, Gen::MAX).user_data(Op::SendZc),
        0xffff_ffff_ffff_ff04
    );
    // The largest index does not touch the generation, the largest generation not the index.
    assert_eq!(SlotKey::new(IDX_MAX, Gen::new(0)).generation(), Gen::new(0));
    assert_eq!(SlotKey::new(0, Gen::MAX).idx(), 0);
    // The driver's own operations keep the values they had before the generation.
    assert_eq!(SlotKey::DRIVER.user_data(Op::Ignore), 9);
    assert_eq!(SlotKey::DRIVER.user_data(Op::EventFd), 8);
}

#[test]
fn generations_wrap_within_their_bits() {
    assert_eq!(Gen::MAX.next(), Gen::new(0));
    assert_eq!(Gen::new(0).next(), Gen::new(1));
    // A full cycle of frees comes back to the start, and every step stays in 24 bits.
    let mut g = Gen::new(5);
    for _ in 0..(1u32 << GEN_BITS) {
        g = g.next();
        assert!(g.0 <= Gen::MAX.0);
    }
    assert_eq!(g, Gen::new(5));
    // A wrapped generation still encodes into its own field only.
    let key = SlotKey::new(3, Gen::MAX.next());
    assert_eq!(key.user_data(Op::Send), (3 << 32) | 3);
}

#[test]
fn an_unknown_op_is_an_error_with_its_value() {
    for raw in [0u8, 14, 15, 0x7f, 0xff] {
        for key in [SlotKey::DRIVER, SlotKey::new(IDX_MAX, Gen::MAX)] {
            let u = key.user_data(Op::Recv) & !0xff | u64::from(raw);
            assert_eq!(decode(u), Err(raw), "{u:#018x}");
        }
    }
}

#[test]
fn only_socket_ops_name_a_slot() {
    let driver_ops = [Op::EventFd, Op::Ignore, Op::EventFdPoll];
    for op in Op::ALL {
        assert_eq!(op.has_slot(), !driver_ops.contains(&op), "{op:?}");
    }
}

#[test]
#[should_panic(expected = "past the user_data index")]
fn an_index_past_the_field_is_refused() {
    let _ = SlotKey::new(IDX_MAX + 1, Gen::new(0));
}
