//! The test servers' answer to a DNS query: any UDP or TCP port a workload serves answers a
//! well-formed DNS query with a DNS answer, and everything else with its reply line. So a pod
//! serving port 53 is both the L4 target the probes expect and a name server whose answers can
//! pass through the agent's DNS proxy (`palisade lab test` probes DNS cases that way).
//!
//! The answer is NOERROR with one `A` record, 192.0.2.53 (TEST-NET-1), TTL 5 s, for an `A`
//! question; NOERROR with no record for any other type.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// The address every `A` question is answered with.
pub const ANSWER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// Its TTL (seconds).
pub const ANSWER_TTL: u32 = 5;

/// The answer to `bytes` if they are one DNS query (one question, QR clear); `None` otherwise.
pub fn answer(bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    if query.metadata.message_type != MessageType::Query || query.queries.len() != 1 {
        return None;
    }
    let mut m = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::NoError,
    );
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    let q = query.queries[0].clone();
    if q.query_type() == RecordType::A {
        m.add_answer(Record::from_rdata(
            q.name().clone(),
            ANSWER_TTL,
            RData::A(A(ANSWER_ADDR)),
        ));
    }
    m.add_query(q);
    m.to_vec().ok()
}

/// For TCP: the answer, length-prefixed, once `buf` holds one whole length-prefixed query.
pub fn answer_tcp(buf: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    let query = buf.get(2..2 + len)?;
    let a = answer(query)?;
    let mut out = u16::try_from(a.len()).ok()?.to_be_bytes().to_vec();
    out.extend(a);
    Some(out)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m.to_vec().expect("encode")
    }

    #[test]
    fn a_query_gets_the_test_address_and_a_line_gets_nothing() {
        let a =
            Message::from_vec(&answer(&query("db.example.test.", RecordType::A)).expect("answer"))
                .expect("decode");
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.metadata.message_type, MessageType::Response);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::A(A(ANSWER_ADDR)));
        let aaaa = Message::from_vec(
            &answer(&query("db.example.test.", RecordType::AAAA)).expect("answer"),
        )
        .expect("decode");
        assert!(aaaa.answers.is_empty());
        // The probes' reply lines and garbage are not DNS.
        assert_eq!(answer(b"palisade-probe hello\n"), None);
        assert_eq!(answer(&[0u8; 5]), None);
        // A response is not answered.
        assert_eq!(
            answer(&answer(&query("x.test.", RecordType::A)).expect("a")),
            None
        );
    }

    #[test]
    fn tcp_waits_for_the_whole_framed_query() {
        let q = query("db.example.test.", RecordType::A);
        let mut framed = u16::try_from(q.len()).expect("len").to_be_bytes().to_vec();
        framed.extend(&q);
        assert_eq!(
            answer_tcp(&framed[..framed.len() - 1]),
            None,
            "one byte short"
        );
        let a = answer_tcp(&framed).expect("answer");
        let len = usize::from(u16::from_be_bytes([a[0], a[1]]));
        assert_eq!(len, a.len() - 2);
        assert_eq!(answer_tcp(b"GET / HTTP/1.1\r\n"), None);
    }
}
