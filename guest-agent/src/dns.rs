//! DNS messages, as the embedded resolver reads and writes them: no I/O.
//!
//! Every query comes from the container, so it is hostile: a message is read within
//! its length, names without compression (a query has no use for it), each label at
//! most 63 bytes and the name at most 255, exactly one question. What this module does
//! not answer it says so ([`Decision::Forward`]) and the resolver passes the query on
//! unchanged; an answer from upstream goes back to the container unread but for its id.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Record types and the class this resolver knows.
const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
#[cfg(test)]
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// Response codes.
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NOTIMP: u8 = 4;
/// Docker's TTL for container names.
const TTL: u32 = 600;
/// The most addresses one name answers with (a name shared by many containers, as a
/// compose service scaled up).
const MAX_ANSWERS: usize = 32;

/// Why a message is not a query this resolver can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than its header or its question.
    #[error("The message is truncated")]
    Truncated,
    /// A response (never answered: that would make loops and reflections).
    #[error("The message is a response")]
    Response,
    /// A question count other than one.
    #[error("The message is not a single query")]
    NotAQuery,
    /// An opcode other than QUERY.
    #[error("Opcode {0} is not implemented")]
    NotImplemented(u8),
    /// A label or name too long, or a compression pointer.
    #[error("The question's name is malformed")]
    BadName,
}

/// A query's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message id.
    pub id: u16,
    /// The name, in lower case, without the final dot.
    pub name: String,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// Where the question ends in the message.
    question_end: usize,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer it with this message.
    Answer(Vec<u8>),
    /// Pass it on to the upstream servers.
    Forward,
}

/// The names of the containers on the network, at query time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    by_name: BTreeMap<String, Vec<Ipv4Addr>>,
    by_address: BTreeMap<Ipv4Addr, String>,
}

impl Names {
    /// The table of `entries` (an address and its names; names compared without case).
    pub fn new(entries: &[(Ipv4Addr, Vec<String>)]) -> Self {
        let mut names = Self::default();
        for (address, list) in entries {
            for n in list {
                let key = n.trim_end_matches('.').to_ascii_lowercase();
                let addresses = names.by_name.entry(key.clone()).or_default();
                if !addresses.contains(address) && addresses.len() < MAX_ANSWERS {
                    addresses.push(*address);
                }
                names.by_address.entry(*address).or_insert(key);
            }
        }
        names
    }

    /// The addresses of `name`, if it is a container's.
    pub fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// What to do with `message`, a query from the container: answer a container's
    /// name (A; AAAA and the other types with no records), a container's address
    /// (PTR), refuse what is not a query, and forward the rest.
    pub fn decide(&self, message: &[u8]) -> Decision {
        let query = match parse_query(message) {
            Ok(q) => q,
            // A response is never answered; nor what has not even a header.
            Err(DnsError::Response) => return Decision::Answer(Vec::new()),
            Err(DnsError::Truncated) if message.len() < 12 => {
                return Decision::Answer(Vec::new());
            }
            Err(DnsError::NotImplemented(_)) => return Decision::Answer(error(message, NOTIMP)),
            Err(_) => return Decision::Answer(error(message, FORMERR)),
        };
        if query.qclass != CLASS_IN {
            return Decision::Forward;
        }
        if let Some(addresses) = self.lookup(&query.name) {
            let records: Vec<Record> = match query.qtype {
                TYPE_A | TYPE_ANY => addresses.iter().map(|a| Record::A(*a)).collect(),
                _ => Vec::new(),
            };
            return Decision::Answer(answer(message, &query, &records));
        }
        if query.qtype == TYPE_PTR
            && let Some(address) = reverse(&query.name)
            && let Some(name) = self.by_address.get(&address)
        {
            return Decision::Answer(answer(message, &query, &[Record::Ptr(name.clone())]));
        }
        Decision::Forward
    }
}

/// An answer record.
enum Record {
    A(Ipv4Addr),
    Ptr(String),
}

/// Reads the header and the single question of `message`.
pub fn parse_query(message: &[u8]) -> Result<Query, DnsError> {
    let header = message.get(..12).ok_or(DnsError::Truncated)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = header[2];
    if flags & 0x80 != 0 {
        return Err(DnsError::Response);
    }
    let opcode = (flags >> 3) & 0x0f;
    if opcode != 0 {
        return Err(DnsError::NotImplemented(opcode));
    }
    if u16::from_be_bytes([header[4], header[5]]) != 1 {
        return Err(DnsError::NotAQuery);
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*message.get(at).ok_or(DnsError::Truncated)?);
        at += 1;
        if len == 0 {
            break;
        }
        // 0xC0: a compression pointer; 0x40 and 0x80: reserved label types.
        if len > 63 {
            return Err(DnsError::BadName);
        }
        let label = message.get(at..at + len).ok_or(DnsError::Truncated)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // Only what a host name or a reverse name holds; anything else is not a
            // container's name and goes upstream as it came.
            if b == b'.' || !b.is_ascii_graphic() {
                name.push('?');
            } else {
                name.push(char::from(b.to_ascii_lowercase()));
            }
        }
        if name.len() > 253 {
            return Err(DnsError::BadName);
        }
        at += len;
    }
    let fixed = message.get(at..at + 4).ok_or(DnsError::Truncated)?;
    Ok(Query {
        id,
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        question_end: at + 4,
    })
}

/// `d.c.b.a.in-addr.arpa` as `a.b.c.d`.
fn reverse(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for o in octets.iter_mut().rev() {
        let p = parts.next()?;
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// A response header for `message`'s id and RD bit: QR, RA, and `rcode`.
fn header(message: &[u8], rcode: u8, questions: u16, answers: u16) -> Vec<u8> {
    let id = [
        message.first().copied().unwrap_or(0),
        message.get(1).copied().unwrap_or(0),
    ];
    let rd = message.get(2).copied().unwrap_or(0) & 0x01;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id);
    // QR, AA (the names are ours), RD as asked; RA; rcode.
    out.push(0x80 | 0x04 | rd);
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// An error response to `message` (no question echoed: it may be what is wrong).
pub fn error(message: &[u8], rcode: u8) -> Vec<u8> {
    if message.len() < 2 {
        return Vec::new();
    }
    header(message, rcode, 0, 0)
}

/// The longest answer sent (over UDP without EDNS, and so over TCP too): records that
/// do not fit are left out and the answer marked truncated, as Docker's resolver does.
const MAX_ANSWER: usize = 512;

/// The response to `query` (read from `message`) with `records`, at most
/// [`MAX_ANSWER`] bytes.
fn answer(message: &[u8], query: &Query, records: &[Record]) -> Vec<u8> {
    let question = &message[12..query.question_end];
    let fit = records
        .iter()
        .scan(12 + question.len(), |size, r| {
            *size += 12
                + match r {
                    Record::A(_) => 4,
                    Record::Ptr(name) => encode_name(name).len(),
                };
            Some(*size)
        })
        .take_while(|&size| size <= MAX_ANSWER)
        .count();
    let mut out = header(message, 0, 1, fit as u16);
    if fit < records.len() {
        out[2] |= 0x02;
    }
    out.extend_from_slice(question);
    for r in &records[..fit] {
        // The question's name, by a pointer to offset 12.
        out.extend_from_slice(&[0xc0, 12]);
        let (rtype, data) = match r {
            Record::A(a) => (TYPE_A, a.octets().to_vec()),
            Record::Ptr(name) => (TYPE_PTR, encode_name(name)),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// A name in wire format (labels longer than 63 bytes cut: names here are checked
/// host names, so none is).
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out
}

/// Whether `reply` answers `query` (a message sent upstream): a response with its id.
pub fn answers(reply: &[u8], query: &[u8]) -> bool {
    reply.len() >= 12 && query.len() >= 2 && reply[..2] == query[..2] && reply[2] & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of `qtype`, with RD set.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&encode_name(name));
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    fn names() -> Names {
        Names::new(&[
            (
                Ipv4Addr::new(10, 0, 0, 2),
                vec!["web".into(), "0123456789ab".into()],
            ),
            (Ipv4Addr::new(10, 0, 0, 3), vec!["Db".into(), "web".into()]),
        ])
    }

    /// The A records of an answer.
    fn addresses(reply: &[u8]) -> Vec<Ipv4Addr> {
        let q = parse_query(&{
            let mut r = reply.to_vec();
            r[2] &= 0x7f;
            r
        })
        .unwrap();
        let count = u16::from_be_bytes([reply[6], reply[7]]);
        let mut at = q.question_end;
        let mut out = Vec::new();
        for _ in 0..count {
            let rdlen = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
            if u16::from_be_bytes([reply[at + 2], reply[at + 3]]) == TYPE_A {
                let o = &reply[at + 12..at + 16];
                out.push(Ipv4Addr::new(o[0], o[1], o[2], o[3]));
            }
            at += 12 + rdlen;
        }
        assert_eq!(at, reply.len());
        out
    }

    #[test]
    fn container_names_are_answered_without_case_and_the_rest_forwarded() {
        let n = names();
        let Decision::Answer(r) = n.decide(&query(7, "WEB.", TYPE_A)) else {
            panic!("web is ours");
        };
        assert_eq!(&r[..2], &7u16.to_be_bytes());
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(
            addresses(&r),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        let Decision::Answer(r) = n.decide(&query(8, "db", TYPE_AAAA)) else {
            panic!("db is ours");
        };
        assert_eq!((r[3] & 0x0f, addresses(&r)), (0, vec![]));
        assert_eq!(
            n.decide(&query(9, "example.com", TYPE_A)),
            Decision::Forward
        );
        assert_eq!(
            n.decide(&query(9, "web.example.com", TYPE_A)),
            Decision::Forward
        );
    }

    #[test]
    fn answers_fit_in_512_bytes_and_say_when_cut() {
        let many: Vec<(Ipv4Addr, Vec<String>)> = (0..40)
            .map(|i| (Ipv4Addr::new(10, 0, 1, i), vec!["svc".to_string()]))
            .collect();
        let Decision::Answer(r) = Names::new(&many).decide(&query(3, "svc", TYPE_A)) else {
            panic!("svc is ours");
        };
        assert!(r.len() <= MAX_ANSWER);
        assert_eq!(r[2] & 0x02, 0x02, "truncated");
        assert_eq!(addresses(&r).len(), MAX_ANSWERS.min((512 - 12 - 9) / 16));
        let Decision::Answer(r) = names().decide(&query(3, "web", TYPE_A)) else {
            panic!("web is ours");
        };
        assert_eq!(r[2] & 0x02, 0, "whole");
    }

    #[test]
    fn container_addresses_answer_reverse_lookups() {
        let Decision::Answer(r) = names().decide(&query(1, "3.0.0.10.in-addr.arpa", TYPE_PTR))
        else {
            panic!("10.0.0.3 is ours");
        };
        assert!(r.ends_with(&encode_name("db")));
        assert_eq!(
            names().decide(&query(1, "9.0.0.10.in-addr.arpa", TYPE_PTR)),
            Decision::Forward
        );
        assert_eq!(reverse("1.02.0.10.in-addr.arpa"), None);
        assert_eq!(reverse("1.2.0.10.0.in-addr.arpa"), None);
    }

    #[test]
    fn hostile_messages_get_errors_not_crashes() {
        let n = names();
        // A compression pointer in the question.
        let mut m = query(1, "web", TYPE_A);
        m[12] = 0xc0;
        assert_eq!(n.decide(&m), Decision::Answer(error(&m, FORMERR)));
        // Truncated in the name and in the fixed part.
        let m = query(1, "web", TYPE_A);
        for cut in 13..m.len() {
            assert!(matches!(n.decide(&m[..cut]), Decision::Answer(_)), "{cut}");
        }
        // A response (never answered), two questions, an opcode other than QUERY.
        let mut r = query(1, "web", TYPE_A);
        r[2] |= 0x80;
        assert_eq!(parse_query(&r), Err(DnsError::Response));
        assert_eq!(n.decide(&r), Decision::Answer(Vec::new()));
        let mut two = query(1, "web", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(DnsError::NotAQuery));
        let mut notify = query(1, "web", TYPE_A);
        notify[2] = 4 << 3;
        assert_eq!(n.decide(&notify), Decision::Answer(error(&notify, NOTIMP)));
        // A name over 253 bytes.
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            parse_query(&query(1, &long, TYPE_A)),
            Err(DnsError::BadName)
        );
        // Nothing to answer to.
        assert_eq!(n.decide(&[1]), Decision::Answer(Vec::new()));
        // A dot inside a label is not a container's name.
        let mut dotted = query(1, "web", TYPE_A);
        dotted[13] = b'.';
        assert_eq!(parse_query(&dotted).unwrap().name, "?eb");
    }

    #[test]
    fn upstream_replies_are_matched_by_id() {
        let q = query(0x1234, "example.com", TYPE_A);
        let mut reply = q.clone();
        reply[2] |= 0x80;
        assert!(answers(&reply, &q));
        assert!(!answers(&q, &q));
        reply[1] ^= 1;
        assert!(!answers(&reply, &q));
    }
}
