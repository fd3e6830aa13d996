//! DNS message logic as pure functions over bytes: validating a client query, building the
//! padded query sent upstream, turning an upstream response into the client's answer, error
//! answers (FORMERR, NOTIMP, SERVFAIL, …) and truncation for UDP.
//!
//! Nothing here does I/O, so every rule is unit-tested with plain byte strings. Client queries are
//! decoded with hickory-proto; the rest works on the wire form directly, because a forwarder must
//! pass answers through untouched (DNSSEC records, unknown types) and only edit the header, the
//! question and the OPT record.

use std::fmt::Write as _;

use hickory_proto::op::{Message, MessageType, OpCode};

pub(crate) use crate::wire::field::read_u32;
use crate::wire::field::{read_u16, skip_name};
use crate::wire::tsig;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP answer for a client that did not send EDNS (RFC 1035 §4.2.1).
pub const PLAIN_UDP_LIMIT: usize = 512;
/// UDP payload size we advertise in answers (the 2020 DNS flag day value).
pub(crate) const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// Queries sent upstream are padded to a multiple of this (RFC 8467 §4.1, block-length padding).
pub const PADDING_BLOCK: usize = 128;
/// Record type SOA, whose MINIMUM field bounds negative caching (RFC 2308).
pub(crate) const TYPE_SOA: u16 = 6;
/// Response codes the cache treats specially.
pub(crate) const RCODE_NOERROR: u16 = 0;
pub(crate) const RCODE_SERVFAIL: u16 = 2;
pub(crate) const RCODE_NXDOMAIN: u16 = 3;

pub(in crate::wire) const TYPE_OPT: u16 = 41;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const OPTION_PADDING: u16 = 12;
/// Size of an OPT record with no options: root name, type, class, TTL, RDLENGTH.
pub(in crate::wire) const OPT_FIXED_LEN: usize = 11;
pub(in crate::wire) const FLAG_QR: u8 = 0x80;
const FLAG_AA: u8 = 0x04;
const FLAG_TC: u8 = 0x02;
pub(in crate::wire) const FLAG_RD: u8 = 0x01;
pub(in crate::wire) const FLAG_RA: u8 = 0x80;
pub(in crate::wire) const FLAG_AD: u8 = 0x20;
pub(in crate::wire) const FLAG_CD: u8 = 0x10;
pub(in crate::wire) const EDNS_DO: u16 = 0x8000;

/// Response codes this crate produces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    FormErr,
    ServFail,
    NotImp,
    Refused,
    /// A TSIG-signed query: no key is shared with any client (RFC 8945 §5.2).
    NotAuth,
    /// Extended RCODE 16 (RFC 6891): an EDNS version we do not speak.
    BadVers,
}

impl Rcode {
    /// The 12-bit response code (extended RCODE included).
    pub(crate) fn value(self) -> u16 {
        match self {
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::NotAuth => 9,
            Rcode::BadVers => 16,
        }
    }
}

/// The client's EDNS(0) parameters that matter to a forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Largest UDP answer the client accepts.
    pub(crate) payload: u16,
    /// DNSSEC OK: the client wants signatures (RFC 3225).
    pub dnssec_ok: bool,
}

/// A client query that passed validation: exactly one question, opcode QUERY, parseable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The packet as received; the answer echoes its id and question bytes exactly.
    pub(in crate::wire) raw: Vec<u8>,
    /// End of the question section in `raw`.
    pub(in crate::wire) question_end: usize,
    pub(in crate::wire) edns: Option<Edns>,
}

/// Why a client packet gets no forwarded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not worth an answer: too short to carry a header, or itself a response (answering a
    /// response would let two resolvers bounce packets off each other forever).
    Drop,
    /// Answer the client with this message (FORMERR, NOTIMP, NOTAUTH, BADVERS or REFUSED), whose
    /// response code is the second field.
    Answer(Vec<u8>, Rcode),
}

/// An upstream response that cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message shorter than a DNS header")]
    Short,
    #[error("message is not a response")]
    NotResponse,
    #[error("response does not carry exactly one question")]
    QuestionCount,
    #[error("malformed name or record")]
    Malformed,
}

/// Validates a packet from a client and decides what to do with it.
pub fn parse_query(packet: &[u8]) -> Result<Query, Rejection> {
    if packet.len() < HEADER_LEN || packet[2] & FLAG_QR != 0 {
        return Err(Rejection::Drop);
    }
    if (packet[2] >> 3) & 0x0f != 0 {
        return Err(Rejection::Answer(
            error_answer(packet, Rcode::NotImp, sent_opt(packet)),
            Rcode::NotImp,
        ));
    }
    if let Some(tsig) = tsig::badkey_record(packet) {
        // NOTAUTH, then the TSIG record, which must be the last (after OPT, if any).
        let mut answer = error_answer(packet, Rcode::NotAuth, sent_opt(packet));
        answer.extend_from_slice(&tsig);
        let additional = read_u16(&answer, 10).unwrap_or(0) + 1;
        answer[10..12].copy_from_slice(&additional.to_be_bytes());
        return Err(Rejection::Answer(answer, Rcode::NotAuth));
    }
    let formerr = || {
        Rejection::Answer(
            error_answer(packet, Rcode::FormErr, sent_opt(packet)),
            Rcode::FormErr,
        )
    };
    let message = Message::from_vec(packet).map_err(|_| formerr())?;
    if message.metadata.message_type != MessageType::Query
        || message.metadata.op_code != OpCode::Query
        || message.queries.len() != 1
        || read_u16(packet, 4) != Some(1)
    {
        return Err(formerr());
    }
    // Only the question is forwarded, copied byte for byte, so it must be self-contained.
    let question_end = question_end(packet).ok_or_else(formerr)?;
    let edns = match &message.edns {
        None => None,
        Some(edns) if edns.version() != 0 => {
            let edns = Edns {
                payload: edns.max_payload(),
                dnssec_ok: edns.flags().dnssec_ok,
            };
            return Err(Rejection::Answer(
                error_answer(packet, Rcode::BadVers, Some(edns)),
                Rcode::BadVers,
            ));
        }
        Some(edns) => Some(Edns {
            payload: edns.max_payload(),
            dnssec_ok: edns.flags().dnssec_ok,
        }),
    };
    let query = Query {
        raw: packet.to_vec(),
        question_end,
        edns,
    };
    // Zone transfers need a multi-message stream a stub forwarder has no use for.
    if matches!(query.qtype(), TYPE_AXFR | TYPE_IXFR) {
        return Err(Rejection::Answer(
            query.error_answer(Rcode::Refused),
            Rcode::Refused,
        ));
    }
    Ok(query)
}

impl Query {
    /// The client's message id.
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.raw[0], self.raw[1]])
    }

    /// The question section in wire form: name, type and class.
    pub fn question(&self) -> &[u8] {
        &self.raw[HEADER_LEN..self.question_end]
    }

    /// The question type (A = 1, AAAA = 28, …).
    pub fn qtype(&self) -> u16 {
        let q = self.question();
        u16::from_be_bytes([q[q.len() - 4], q[q.len() - 3]])
    }

    /// The client's EDNS parameters, if it sent an OPT record.
    pub fn edns(&self) -> Option<Edns> {
        self.edns
    }

    /// Largest answer this client can take over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(edns) => usize::from(edns.payload).max(PLAIN_UDP_LIMIT),
            None => PLAIN_UDP_LIMIT,
        }
    }

    /// The question as text for logs, e.g. `example.com. A`.
    pub fn describe(&self) -> String {
        let question = self.question();
        let mut text = name_to_text(question);
        let _ = write!(text, " {}", type_name(self.qtype()));
        text
    }

    /// An answer with this rcode, the client's id and question, and OPT if the client sent one.
    pub fn error_answer(&self, rcode: Rcode) -> Vec<u8> {
        error_answer(&self.raw, rcode, self.edns)
    }

    /// The query we send upstream, framed with its 2-byte length prefix for DNS over TLS.
    ///
    /// The id bytes (offsets 2..4 of the frame) are zero: the connection writes its own id there.
    /// The client's RD, AD and CD bits and its DO bit are kept; its other EDNS options (client
    /// subnet, cookies) are not forwarded, and the message is padded to a multiple of
    /// [`PADDING_BLOCK`] so its length says little about the name asked (RFC 7830, RFC 8467).
    pub fn upstream_frame(&self) -> Vec<u8> {
        let unpadded = HEADER_LEN + self.question().len() + OPT_FIXED_LEN + 4;
        let padding = (PADDING_BLOCK - unpadded % PADDING_BLOCK) % PADDING_BLOCK;
        let length = unpadded + padding;
        let mut frame = Vec::with_capacity(2 + length);
        // `length` fits: a question is at most 259 bytes, so the message stays under 512.
        frame.extend_from_slice(&(length as u16).to_be_bytes());
        self.push_upstream_message(&mut frame, 0, Some(padding as u16));
        frame
    }

    /// The query for a plain-DNS upstream (a forward zone's resolver inside the network): the
    /// same as [`Query::upstream_frame`] with `id`, unframed and unpadded, since padding only
    /// helps on an encrypted hop.
    pub(crate) fn plain_upstream_message(&self, id: u16) -> Vec<u8> {
        let mut message = Vec::with_capacity(HEADER_LEN + self.question().len() + OPT_FIXED_LEN);
        self.push_upstream_message(&mut message, id, None);
        message
    }

    /// Appends the upstream query: header with `id` and the client's RD, AD and CD bits, the
    /// question, and OPT with the client's DO bit and, if given, a padding option that long.
    fn push_upstream_message(&self, out: &mut Vec<u8>, id: u16, padding: Option<u16>) {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(self.raw[2] & FLAG_RD);
        out.push(self.raw[3] & (FLAG_AD | FLAG_CD));
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
        out.extend_from_slice(self.question());
        let dnssec_ok = self.edns.is_some_and(|e| e.dnssec_ok);
        match padding {
            Some(padding) => {
                push_opt_header(out, 0, dnssec_ok, 4 + padding);
                out.extend_from_slice(&OPTION_PADDING.to_be_bytes());
                out.extend_from_slice(&padding.to_be_bytes());
                out.resize(out.len() + usize::from(padding), 0);
            }
            None => push_opt_header(out, 0, dnssec_ok, 0),
        }
    }

    /// Turns an upstream response into this client's answer (see [`Response`]).
    pub fn answer_from(&self, response: &[u8]) -> Result<Vec<u8>, WireError> {
        let response = Response::prepare(response)?;
        if response.question_end - HEADER_LEN != self.question().len() {
            return Err(WireError::QuestionCount);
        }
        Ok(self.answer(&response))
    }

    /// This client's answer from a prepared response to the same question: the client's id and
    /// its question bytes (so it sees its own spelling), and the OPT record only if the client
    /// sent one. One copy, no parsing: this is the cache's hit path.
    pub fn answer(&self, response: &Response) -> Vec<u8> {
        let question = self.question();
        let end = match (response.opt_start, self.edns) {
            (Some(start), None) => start,
            _ => response.bytes.len(),
        };
        let mut answer = Vec::with_capacity(end);
        answer.extend_from_slice(&self.raw[..2]);
        answer.extend_from_slice(&response.bytes[2..HEADER_LEN]);
        answer.extend_from_slice(question);
        answer.extend_from_slice(&response.bytes[HEADER_LEN + question.len()..end]);
        if end != response.bytes.len() {
            let ar = read_u16(&answer, 10).unwrap_or(1);
            answer[10..12].copy_from_slice(&ar.saturating_sub(1).to_be_bytes());
        }
        answer
    }

    /// An answer made here (for a local zone): the client's id, question and flags, AA and RA
    /// set, the given records, and OPT if the client sent one.
    pub(crate) fn local_answer(
        &self,
        rcode: u16,
        answers: &[LocalRecord],
        authority: &[LocalRecord],
    ) -> Vec<u8> {
        let question = self.question();
        let mut answer = Vec::with_capacity(HEADER_LEN + question.len() + 64);
        answer.extend_from_slice(&self.raw[..2]);
        answer.push(FLAG_QR | FLAG_AA | (self.raw[2] & FLAG_RD));
        answer.push(FLAG_RA | (self.raw[3] & FLAG_CD) | (rcode & 0x0f) as u8);
        answer.extend_from_slice(&[0, 1]);
        answer.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        answer.extend_from_slice(&(authority.len() as u16).to_be_bytes());
        answer.extend_from_slice(&[0, u8::from(self.edns.is_some())]);
        answer.extend_from_slice(question);
        for record in answers.iter().chain(authority) {
            match record.owner {
                Some(owner) => answer.extend_from_slice(owner),
                // A pointer to the question's name.
                None => answer.extend_from_slice(&[0xc0, HEADER_LEN as u8]),
            }
            answer.extend_from_slice(&record.rtype.to_be_bytes());
            answer.extend_from_slice(&[0, 1]);
            answer.extend_from_slice(&record.ttl.to_be_bytes());
            answer.extend_from_slice(&(record.rdata.len() as u16).to_be_bytes());
            answer.extend_from_slice(record.rdata);
        }
        if let Some(edns) = self.edns {
            push_opt_header(&mut answer, 0, edns.dnssec_ok, 0);
        }
        answer
    }

    /// The header bits that change what an upstream answers (RD, AD, CD and the DO bit), as
    /// one byte: queries that differ in them must not share a cached answer.
    pub(crate) fn answer_bits(&self) -> u8 {
        let do_bit = if self.edns.is_some_and(|e| e.dnssec_ok) {
            0x04
        } else {
            0
        };
        (self.raw[2] & FLAG_RD) | (self.raw[3] & (FLAG_AD | FLAG_CD)) | do_bit
    }
}

/// A record of an answer made here; its class is IN.
pub(crate) struct LocalRecord<'a> {
    /// Owner name in wire form; `None` for the question's name.
    pub(crate) owner: Option<&'a [u8]>,
    pub(crate) rtype: u16,
    pub(crate) ttl: u32,
    pub(crate) rdata: &'a [u8],
}

/// An upstream response made ready to answer any client asking the same question: checked to
/// be well formed, its OPT record (when present, it is the last record) carrying our payload
/// size and no padding. Building a client's answer from it is a copy and two small edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub(in crate::wire) bytes: Vec<u8>,
    pub(in crate::wire) question_end: usize,
    /// Where the OPT record starts; it is cut off for clients that sent none.
    pub(in crate::wire) opt_start: Option<usize>,
}

impl Response {
    /// Checks an upstream response and strips its padding.
    pub fn prepare(response: &[u8]) -> Result<Response, WireError> {
        let layout = Layout::of(response)?;
        let (bytes, opt_start) = match layout.last_opt {
            Some(opt) => {
                let mut bytes = Vec::with_capacity(response.len());
                bytes.extend_from_slice(&response[..opt.start]);
                push_opt_without_padding(&mut bytes, &response[opt.start..]);
                (bytes, Some(opt.start))
            }
            None => (response.to_vec(), None),
        };
        Ok(Response {
            bytes,
            question_end: layout.question_end,
            opt_start,
        })
    }

    /// The question section: name, type and class.
    pub fn question(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.question_end]
    }

    /// The message as prepared (with the id and question spelling of the upstream query).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The response code, as [`header_rcode`] reads it.
    pub(crate) fn rcode(&self) -> u16 {
        header_rcode(&self.bytes)
    }

    /// Number of records in the answer section.
    pub(crate) fn answer_count(&self) -> u16 {
        read_u16(&self.bytes, 6).unwrap_or(0)
    }

    /// Every record after the question except the OPT record, in order. The message was
    /// checked by [`Response::prepare`], so the walk always reaches its end.
    pub(crate) fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let count = [6, 8, 10]
            .iter()
            .map(|&at| usize::from(read_u16(&self.bytes, at).unwrap_or(0)))
            .sum::<usize>();
        let end = self.opt_start.unwrap_or(self.bytes.len());
        let answers = usize::from(self.answer_count());
        let authority = usize::from(read_u16(&self.bytes, 8).unwrap_or(0));
        let mut pos = self.question_end;
        (0..count).map_while(move |index| {
            if pos >= end {
                return None;
            }
            let name_end = skip_name(&self.bytes, pos)?;
            let rdlength = usize::from(read_u16(&self.bytes, name_end + 8)?);
            let rdata = name_end + 10..name_end + 10 + rdlength;
            let record = Record {
                section: match index {
                    i if i < answers => Section::Answer,
                    i if i < answers + authority => Section::Authority,
                    _ => Section::Additional,
                },
                rtype: read_u16(&self.bytes, name_end)?,
                ttl_at: name_end + 4,
                ttl: read_u32(&self.bytes, name_end + 4)?,
                rdata: rdata.clone(),
            };
            pos = rdata.end;
            Some(record)
        })
    }

    /// Overwrites the TTL field at `at` (an offset from [`Record::ttl_at`]).
    pub(crate) fn set_ttl(&mut self, at: usize, ttl: u32) {
        set_ttl(&mut self.bytes, at, ttl);
    }

    /// A record's data, e.g. to read the SOA minimum.
    pub(crate) fn rdata(&self, record: &Record) -> &[u8] {
        self.bytes.get(record.rdata.clone()).unwrap_or_default()
    }
}

/// One resource record of a [`Response`], located but not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) section: Section,
    pub(crate) rtype: u16,
    /// Offset of the 4-byte TTL field in the message.
    pub(crate) ttl_at: usize,
    pub(crate) ttl: u32,
    rdata: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Answer,
    Authority,
    Additional,
}

/// Writes `ttl` into the TTL field at `at` of a message: a [`Response`], or a client answer
/// built by [`Query::answer`], whose records sit at the same offsets as in its response.
pub(crate) fn set_ttl(answer: &mut [u8], at: usize, ttl: u32) {
    if let Some(field) = answer.get_mut(at..at + 4) {
        field.copy_from_slice(&ttl.to_be_bytes());
    }
}

/// Whether `response` answers the upstream query we sent with `question`: a response, with one
/// question equal to ours (names compared case-insensitively, type and class exactly).
pub fn response_matches(response: &[u8], question: &[u8]) -> bool {
    if response.len() < HEADER_LEN || response[2] & FLAG_QR == 0 || read_u16(response, 4) != Some(1)
    {
        return false;
    }
    let Some(end) = question_end(response) else {
        return false;
    };
    let theirs = &response[HEADER_LEN..end];
    theirs.len() == question.len()
        && theirs[..theirs.len() - 4].eq_ignore_ascii_case(&question[..question.len() - 4])
        && theirs[theirs.len() - 4..] == question[question.len() - 4..]
}

/// Whether a message has TC set: the sender had more than fit.
pub(crate) fn is_truncated(message: &[u8]) -> bool {
    message.get(2).is_some_and(|flags| flags & FLAG_TC != 0)
}

/// The response code in the header of an answer (0 when it is too short to have one).
///
/// Only the header's 4 bits: an extended RCODE lives in the OPT record. That is complete for
/// answers from upstreams, which are sent EDNS version 0 and no cookie, the only causes of the
/// extended codes a resolver returns (BADVERS, BADCOOKIE); our own BADVERS is known where it
/// is made ([`Rejection::Answer`]).
pub(crate) fn header_rcode(answer: &[u8]) -> u16 {
    answer.get(3).map_or(0, |b| u16::from(b & 0x0f))
}

/// The id of a message, if it is long enough to have one.
pub fn message_id(message: &[u8]) -> Option<u16> {
    read_u16(message, 0)
}

/// Fits an answer into a UDP datagram of at most `limit` bytes.
///
/// An answer that is too long is replaced by its header with TC=1, its question and its OPT
/// record, with no records, so the client asks again over TCP (RFC 7766 §5). Cutting records
/// out one by one would hand the client a partial RRset that looks complete.
pub fn truncate_for_udp(answer: Vec<u8>, limit: usize) -> Vec<u8> {
    if answer.len() <= limit {
        return answer;
    }
    let Ok(layout) = Layout::of(&answer) else {
        // Cannot happen for answers built by this module; a bare header is still correct.
        let mut header = answer[..HEADER_LEN.min(answer.len())].to_vec();
        header.resize(HEADER_LEN, 0);
        header[2] |= FLAG_TC;
        header[4..12].fill(0);
        return header;
    };
    let mut short = Vec::with_capacity(layout.question_end + OPT_FIXED_LEN);
    short.extend_from_slice(&answer[..layout.question_end]);
    short[2] |= FLAG_TC;
    short[6..12].fill(0);
    if let Some(opt) = layout.last_opt {
        short[11] = 1;
        // Root name, type, class and TTL of the OPT record, without its options.
        short.extend_from_slice(&answer[opt.start..opt.start + OPT_FIXED_LEN - 2]);
        short.extend_from_slice(&[0, 0]);
    }
    short
}

/// The OPT record of a client packet that may be malformed, read as far as the packet allows:
/// the first record of type OPT in the additional section, whatever its owner name or options,
/// once the records before it can be walked. A client that sent OPT gets OPT back even with
/// FORMERR (RFC 6891 §7), so that it can tell a format error from a server without EDNS.
pub(in crate::wire) fn sent_opt(packet: &[u8]) -> Option<Edns> {
    let [questions, answers, authorities, additionals] =
        [4, 6, 8, 10].map(|at| usize::from(read_u16(packet, at).unwrap_or(0)));
    let mut pos = HEADER_LEN;
    for _ in 0..questions {
        pos = skip_name(packet, pos)? + 4;
    }
    for i in 0..answers + authorities + additionals {
        pos = skip_name(packet, pos)?;
        let rtype = read_u16(packet, pos)?;
        if rtype == TYPE_OPT && i >= answers + authorities {
            return Some(Edns {
                payload: read_u16(packet, pos + 2)?,
                dnssec_ok: read_u16(packet, pos + 6)? & EDNS_DO != 0,
            });
        }
        pos += 10 + usize::from(read_u16(packet, pos + 8)?);
    }
    None
}

/// An answer with `rcode` to the packet `request`: its id, opcode, RD bit and, for a QUERY,
/// RA and its CD bit; its question when the question can be read; with an OPT record when
/// `edns` is given.
///
/// RA and CD are defined for QUERY only (RFC 1035 §4.1.1, RFC 4035 §3.1.6); for other
/// opcodes they are zero, as RFC 2136 §3.8 says for UPDATE.
pub(in crate::wire) fn error_answer(request: &[u8], rcode: Rcode, edns: Option<Edns>) -> Vec<u8> {
    let question = match (read_u16(request, 4), question_end(request)) {
        (Some(1), Some(end)) => &request[HEADER_LEN..end],
        _ => &[][..],
    };
    let mut answer = Vec::with_capacity(HEADER_LEN + question.len() + OPT_FIXED_LEN);
    answer.extend_from_slice(&request[..2]);
    answer.push(FLAG_QR | (request[2] & (0x78 | FLAG_RD)));
    let query_bits = match (request[2] >> 3) & 0x0f {
        0 => FLAG_RA | (request[3] & FLAG_CD),
        _ => 0,
    };
    answer.push(query_bits | (rcode.value() & 0x0f) as u8);
    answer.extend_from_slice(&[0, u8::from(!question.is_empty()), 0, 0, 0, 0]);
    answer.push(0);
    answer.push(u8::from(edns.is_some()));
    answer.extend_from_slice(question);
    if let Some(edns) = edns {
        push_opt_header(&mut answer, (rcode.value() >> 4) as u8, edns.dnssec_ok, 0);
    }
    answer
}

/// Appends an OPT record header advertising our payload size; `rdlength` bytes of options follow.
pub(in crate::wire) fn push_opt_header(
    out: &mut Vec<u8>,
    extended_rcode: u8,
    dnssec_ok: bool,
    rdlength: u16,
) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[extended_rcode, 0]);
    out.extend_from_slice(&(if dnssec_ok { EDNS_DO } else { 0 }).to_be_bytes());
    out.extend_from_slice(&rdlength.to_be_bytes());
}

/// Appends a copy of the OPT record `opt` with our payload size and without padding options:
/// padding protects the encrypted upstream hop and is only noise on the local one.
fn push_opt_without_padding(out: &mut Vec<u8>, opt: &[u8]) {
    let start = out.len();
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&opt[5..9]);
    out.extend_from_slice(&[0, 0]);
    let mut options = &opt[OPT_FIXED_LEN..];
    while options.len() >= 4 {
        let code = u16::from_be_bytes([options[0], options[1]]);
        let len = 4 + usize::from(u16::from_be_bytes([options[2], options[3]]));
        let Some(option) = options.get(..len) else {
            break;
        };
        if code != OPTION_PADDING {
            out.extend_from_slice(option);
        }
        options = &options[len..];
    }
    let rdlength = (out.len() - start - OPT_FIXED_LEN) as u16;
    out[start + 9..start + 11].copy_from_slice(&rdlength.to_be_bytes());
}

/// Where the parts of a response are, found by walking every record once.
#[derive(Debug)]
struct Layout {
    question_end: usize,
    /// The OPT record, when it is the last record of the message: the only place it can be
    /// edited or dropped without moving any other record.
    last_opt: Option<std::ops::Range<usize>>,
}

impl Layout {
    fn of(message: &[u8]) -> Result<Layout, WireError> {
        if message.len() < HEADER_LEN {
            return Err(WireError::Short);
        }
        if message[2] & FLAG_QR == 0 {
            return Err(WireError::NotResponse);
        }
        if read_u16(message, 4) != Some(1) {
            return Err(WireError::QuestionCount);
        }
        let question_end = question_end(message).ok_or(WireError::Malformed)?;
        let [answers, authorities, additionals] =
            [6, 8, 10].map(|at| usize::from(read_u16(message, at).unwrap_or(0)));
        let mut pos = question_end;
        let mut last_opt = None;
        for i in 0..answers + authorities + additionals {
            let start = pos;
            pos = skip_name(message, pos).ok_or(WireError::Malformed)?;
            let rtype = read_u16(message, pos).ok_or(WireError::Malformed)?;
            let rdlength = read_u16(message, pos + 8).ok_or(WireError::Malformed)?;
            pos += 10 + usize::from(rdlength);
            if pos > message.len() {
                return Err(WireError::Malformed);
            }
            // Only an OPT counted in ARCOUNT is one (RFC 6891 §6.1.1): removing one from another
            // section would leave its count wrong.
            let additional = i >= answers + authorities;
            last_opt =
                (additional && rtype == TYPE_OPT && message[start] == 0).then_some(start..pos);
        }
        if pos != message.len() {
            return Err(WireError::Malformed);
        }
        Ok(Layout {
            question_end,
            last_opt,
        })
    }
}

/// End of the first question when it is a plain name (no compression pointer) plus type and
/// class. The first name of a message has nothing before it to point to, so a pointer there is
/// malformed.
pub(in crate::wire) fn question_end(message: &[u8]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*message.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
        // At most 255 bytes with the root label still to come (RFC 1035 §3.1).
        if pos - HEADER_LEN > 254 {
            return None;
        }
    }
    let end = pos + 4;
    (end <= message.len()).then_some(end)
}

/// The labels of the wire-form name at the start of `wire`, up to the root label or the first
/// byte that is no label length (a compression pointer).
pub(crate) fn labels(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*wire.get(pos)?);
        if len == 0 || len > 63 {
            return None;
        }
        let label = wire.get(pos + 1..pos + 1 + len).unwrap_or(&[]);
        pos += 1 + len;
        Some(label)
    })
}

/// A wire-form name (at the start of `wire`) as presentation text for logs: it comes from the
/// network, so every byte that is not printable ASCII is escaped (RFC 1035 §5.1).
pub(crate) fn name_to_text(wire: &[u8]) -> String {
    let mut text = String::new();
    for label in labels(wire) {
        for &byte in label {
            match byte {
                b'.' | b'\\' => {
                    text.push('\\');
                    text.push(char::from(byte));
                }
                0x21..=0x7e => text.push(char::from(byte)),
                _ => {
                    let _ = write!(text, "\\{byte:03}");
                }
            }
        }
        text.push('.');
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

pub(crate) fn type_name(qtype: u16) -> String {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        39 => "DNAME",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        50 => "NSEC3",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        other => return format!("TYPE{other}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` with type `qtype`, optionally with an OPT record.
    fn query(id: u16, name: &str, qtype: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[FLAG_RD, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if let Some((payload, dnssec_ok)) = edns {
            q.push(0);
            q.extend_from_slice(&TYPE_OPT.to_be_bytes());
            q.extend_from_slice(&payload.to_be_bytes());
            q.extend_from_slice(&[0, 0]);
            q.extend_from_slice(&(if dnssec_ok { EDNS_DO } else { 0 }).to_be_bytes());
            q.extend_from_slice(&[0, 0]);
        }
        q
    }

    /// A response to `request` with `count` A records (compressed owner names) and, if `opt`,
    /// an OPT record carrying `opt_options`.
    fn response(request: &[u8], count: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let end = question_end(request).unwrap();
        let mut r = request[..end].to_vec();
        r[2] |= FLAG_QR;
        r[3] |= FLAG_RA;
        r[6..8].copy_from_slice(&count.to_be_bytes());
        r[8..10].fill(0);
        r[10..12].copy_from_slice(&u16::from(opt.is_some()).to_be_bytes());
        for i in 0..count {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2]);
            r.push(i as u8);
        }
        if let Some(options) = opt {
            r.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0]);
            r.extend_from_slice(&(options.len() as u16).to_be_bytes());
            r.extend_from_slice(options);
        }
        r
    }

    use super::header_rcode as rcode;

    #[test]
    fn short_packets_and_responses_are_dropped() {
        assert_eq!(parse_query(&[0; 11]), Err(Rejection::Drop));
        let mut r = query(1, "example.com", 1, None);
        r[2] |= FLAG_QR;
        assert_eq!(parse_query(&r), Err(Rejection::Drop));
    }

    #[test]
    fn other_opcodes_get_notimp_with_question() {
        let mut q = query(7, "example.com", 1, None);
        q[2] |= 2 << 3; // STATUS
        q[3] |= FLAG_CD;
        let Err(Rejection::Answer(a, Rcode::NotImp)) = parse_query(&q) else {
            panic!("expected NOTIMP");
        };
        // RA and CD are defined for QUERY only: zero for any other opcode.
        assert_eq!(a[3] & (FLAG_RA | FLAG_CD), 0);
        let mut update = query(7, "example.com", 6, None);
        update[2] = (5 << 3) | FLAG_RD;
        update[3] = FLAG_CD;
        let Err(Rejection::Answer(u, Rcode::NotImp)) = parse_query(&update) else {
            panic!("expected NOTIMP");
        };
        assert_eq!(u[2], FLAG_QR | (5 << 3) | FLAG_RD);
        assert_eq!(u[3], 4, "RCODE NOTIMP and nothing else");
        assert_eq!(rcode(&a), 4);
        assert_eq!(header_rcode(&a), 4);
        assert_eq!(&a[..2], &[0, 7]);
        assert_eq!(a[2] & FLAG_QR, FLAG_QR);
        assert_eq!(read_u16(&a, 4), Some(1));
        assert_eq!(&a[12..], &q[12..]);
    }

    #[test]
    fn error_answers_to_queries_keep_ra_and_cd() {
        let mut q = query(7, "example.com", TYPE_AXFR, None);
        q[3] |= FLAG_CD;
        let Err(Rejection::Answer(a, Rcode::Refused)) = parse_query(&q) else {
            panic!("expected REFUSED");
        };
        assert_eq!(a[3], FLAG_RA | FLAG_CD | 5);
    }

    #[test]
    fn question_count_other_than_one_is_formerr() {
        let mut none = query(1, "example.com", 1, None);
        none.truncate(12);
        none[5] = 0;
        let mut two = query(1, "example.com", 1, None);
        let question = two[12..].to_vec();
        two.extend_from_slice(&question);
        two[5] = 2;
        for packet in [none, two] {
            let Err(Rejection::Answer(a, Rcode::FormErr)) = parse_query(&packet) else {
                panic!("expected FORMERR");
            };
            assert_eq!(rcode(&a), 1);
        }
    }

    #[test]
    fn header_with_broken_body_is_formerr() {
        let mut q = query(9, "example.com", 1, None);
        q.truncate(q.len() - 3);
        let Err(Rejection::Answer(a, _)) = parse_query(&q) else {
            panic!("expected an answer");
        };
        assert_eq!(rcode(&a), 1);
        assert_eq!(&a[..2], &[0, 9]);
        assert_eq!(a.len(), HEADER_LEN);
    }

    #[test]
    fn formerr_does_not_echo_a_256_byte_name() {
        // Labels of 63, 63, 63 and `last` bytes, then the root label.
        let name = |last: usize| {
            let labels = [
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(last),
            ];
            query(4, &labels.join("."), 1, None)
        };
        // 256 bytes: one too many.
        let Err(Rejection::Answer(a, _)) = parse_query(&name(62)) else {
            panic!("expected an answer");
        };
        assert_eq!(rcode(&a), 1);
        assert_eq!(a.len(), HEADER_LEN, "no question echoed");
        assert!(Message::from_vec(&a).is_ok());
        // 255 bytes is the longest name, and is read.
        assert_eq!(parse_query(&name(61)).map(|q| q.question().len()), Ok(259));
    }

    #[test]
    fn compressed_first_question_is_formerr() {
        let mut q = query(1, "", 1, None);
        q.truncate(12);
        q.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&q), Err(Rejection::Answer(a, _)) if rcode(&a) == 1));
    }

    #[test]
    fn unknown_edns_version_is_badvers() {
        let mut q = query(3, "example.com", 1, Some((4096, false)));
        let version_at = q.len() - 5;
        q[version_at] = 1;
        let Err(Rejection::Answer(a, Rcode::BadVers)) = parse_query(&q) else {
            panic!("expected BADVERS");
        };
        assert_eq!(Rcode::BadVers.value(), 16);
        assert_eq!(rcode(&a), 0);
        assert_eq!(read_u16(&a, 10), Some(1));
        // Extended RCODE: upper 8 bits of 16 live in the OPT TTL's first byte.
        assert_eq!(a[a.len() - 6], 1);
    }

    #[test]
    fn zone_transfers_are_refused() {
        let q = query(3, "example.com", TYPE_AXFR, None);
        assert!(
            matches!(parse_query(&q), Err(Rejection::Answer(a, Rcode::Refused)) if rcode(&a) == 5)
        );
    }

    #[test]
    fn valid_query_exposes_question_and_edns() {
        let q = parse_query(&query(0xabcd, "Example.COM", 28, Some((4096, true)))).unwrap();
        assert_eq!(q.id(), 0xabcd);
        assert_eq!(q.qtype(), 28);
        assert_eq!(q.describe(), "Example.COM. AAAA");
        assert_eq!(
            q.edns(),
            Some(Edns {
                payload: 4096,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), 4096);
        let plain = parse_query(&query(1, "example.com", 1, None)).unwrap();
        assert_eq!(plain.udp_limit(), PLAIN_UDP_LIMIT);
        let tiny = parse_query(&query(1, "example.com", 1, Some((100, false)))).unwrap();
        assert_eq!(tiny.udp_limit(), PLAIN_UDP_LIMIT);
    }

    #[test]
    fn upstream_frame_is_padded_and_keeps_flags() {
        for name in ["a", "example.com", &"x".repeat(63), "a.b.c.d.e.f.g.h"] {
            let mut raw = query(0x1234, name, 1, Some((1232, true)));
            raw[3] |= FLAG_CD;
            let q = parse_query(&raw).unwrap();
            let frame = q.upstream_frame();
            let message = &frame[2..];
            assert_eq!(read_u16(&frame, 0), Some(message.len() as u16));
            assert_eq!(message.len() % PADDING_BLOCK, 0, "{name}");
            assert_eq!(&message[..2], &[0, 0], "id is left for the connection");
            assert_eq!(message[2], FLAG_RD);
            assert_eq!(message[3], FLAG_CD);
            let parsed = Message::from_vec(message).unwrap();
            let edns = parsed.edns.unwrap();
            assert!(edns.flags().dnssec_ok);
            assert!(
                edns.options()
                    .as_ref()
                    .iter()
                    .any(|(code, _)| u16::from(*code) == OPTION_PADDING)
            );
            assert_eq!(&message[12..12 + q.question().len()], q.question());
        }
    }

    #[test]
    fn upstream_frame_without_client_edns_has_do_clear() {
        let q = parse_query(&query(1, "example.com", 1, None)).unwrap();
        let frame = q.upstream_frame();
        let parsed = Message::from_vec(&frame[2..]).unwrap();
        assert!(!parsed.edns.unwrap().flags().dnssec_ok);
    }

    #[test]
    fn answer_carries_client_id_and_question_spelling() {
        let q = parse_query(&query(0x4242, "ExAmPle.com", 1, None)).unwrap();
        let mut upstream = response(&query(0x0001, "example.COM", 1, None), 2, None);
        upstream[2] &= !FLAG_RD;
        assert!(response_matches(&upstream, q.question()));
        let answer = q.answer_from(&upstream).unwrap();
        assert_eq!(&answer[..2], &[0x42, 0x42]);
        assert_eq!(&answer[12..12 + q.question().len()], q.question());
        assert_eq!(&answer[2..12], &upstream[2..12]);
        let parsed = Message::from_vec(&answer).unwrap();
        assert_eq!(parsed.answers.len(), 2);
    }

    #[test]
    fn answer_drops_opt_for_client_without_edns() {
        let q = parse_query(&query(5, "example.com", 1, None)).unwrap();
        let upstream = response(
            &query(1, "example.com", 1, None),
            1,
            Some(&[0, 12, 0, 2, 0, 0]),
        );
        let answer = q.answer_from(&upstream).unwrap();
        let parsed = Message::from_vec(&answer).unwrap();
        assert!(parsed.edns.is_none());
        assert_eq!(read_u16(&answer, 10), Some(0));
    }

    #[test]
    fn answer_strips_padding_but_keeps_other_options() {
        let q = parse_query(&query(5, "example.com", 1, Some((4096, true)))).unwrap();
        // Extended DNS error (15) and padding (12).
        let options = [0, 15, 0, 2, 0, 18, 0, 12, 0, 3, 0, 0, 0];
        let upstream = response(&query(1, "example.com", 1, None), 1, Some(&options));
        let answer = q.answer_from(&upstream).unwrap();
        let parsed = Message::from_vec(&answer).unwrap();
        let edns = parsed.edns.unwrap();
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.max_payload(), ADVERTISED_UDP_PAYLOAD);
        let codes: Vec<u16> = edns
            .options()
            .as_ref()
            .iter()
            .map(|(code, _)| u16::from(*code))
            .collect();
        assert_eq!(codes, vec![15]);
    }

    #[test]
    fn mismatched_responses_are_rejected() {
        let q = parse_query(&query(5, "example.com", 1, None)).unwrap();
        let other_name = response(&query(1, "example.org", 1, None), 1, None);
        let other_type = response(&query(1, "example.com", 28, None), 1, None);
        let not_response = query(1, "example.com", 1, None);
        for bad in [&other_name, &other_type, &not_response] {
            assert!(!response_matches(bad, q.question()));
        }
        assert!(!response_matches(&[0; 5], q.question()));
    }

    #[test]
    fn malformed_responses_are_errors() {
        let q = parse_query(&query(5, "example.com", 1, None)).unwrap();
        let good = response(&query(1, "example.com", 1, None), 3, None);
        for cut in 0..good.len() {
            assert!(q.answer_from(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(q.answer_from(&trailing), Err(WireError::Malformed));
    }

    #[test]
    fn opt_record_outside_additional_section_is_not_removed() {
        // An upstream that puts an OPT record last in the authority section: dropping it for a
        // client without EDNS used to leave NSCOUNT=1 over no record, a malformed answer.
        let q = parse_query(&query(5, "example.com", 1, None)).unwrap();
        let mut upstream = response(&query(1, "example.com", 1, None), 0, Some(&[]));
        upstream[8..12].copy_from_slice(&[0, 1, 0, 0]);
        let answer = q.answer_from(&upstream).unwrap();
        assert_eq!(answer[2..], upstream[2..]);
        assert!(q.answer_from(&answer).is_ok());
        let edns = parse_query(&query(5, "example.com", 1, Some((1232, false)))).unwrap();
        assert_eq!(edns.answer_from(&upstream).unwrap()[2..], upstream[2..]);
    }

    #[test]
    fn long_answers_are_truncated_for_udp() {
        let q = parse_query(&query(5, "example.com", 1, None)).unwrap();
        let big = q
            .answer_from(&response(&query(1, "example.com", 1, None), 40, None))
            .unwrap();
        assert!(big.len() > PLAIN_UDP_LIMIT);
        let short = truncate_for_udp(big.clone(), q.udp_limit());
        assert!(short.len() <= PLAIN_UDP_LIMIT);
        assert_eq!(short[2] & FLAG_TC, FLAG_TC);
        let parsed = Message::from_vec(&short).unwrap();
        assert!(parsed.answers.is_empty());
        assert_eq!(parsed.queries.len(), 1);
        assert_eq!(truncate_for_udp(big.clone(), 65535), big);
    }

    #[test]
    fn truncation_keeps_opt_for_edns_clients() {
        let q = parse_query(&query(5, "example.com", 1, Some((600, true)))).unwrap();
        let upstream = response(&query(1, "example.com", 1, None), 60, Some(&[]));
        let big = q.answer_from(&upstream).unwrap();
        let short = truncate_for_udp(big, q.udp_limit());
        assert!(short.len() <= 600);
        let parsed = Message::from_vec(&short).unwrap();
        assert!(parsed.edns.unwrap().flags().dnssec_ok);
        assert!(parsed.metadata.truncation);
    }

    #[test]
    fn servfail_keeps_id_question_and_edns() {
        let q = parse_query(&query(0x0102, "example.com", 1, Some((1232, true)))).unwrap();
        let a = q.error_answer(Rcode::ServFail);
        let parsed = Message::from_vec(&a).unwrap();
        assert_eq!(parsed.metadata.id, 0x0102);
        assert_eq!(rcode(&a), 2);
        assert!(parsed.metadata.recursion_desired);
        assert!(parsed.edns.unwrap().flags().dnssec_ok);
        assert_eq!(parsed.queries.len(), 1);
    }

    /// `packet` with an OPT record appended to the additional section: `owner` as its name,
    /// DO set, and `options` as its RDATA with this RDLENGTH.
    fn with_opt(mut packet: Vec<u8>, owner: &[u8], options: &[u8], rdlength: u16) -> Vec<u8> {
        let arcount = read_u16(&packet, 10).unwrap() + 1;
        packet[10..12].copy_from_slice(&arcount.to_be_bytes());
        packet.extend_from_slice(owner);
        packet.extend_from_slice(&TYPE_OPT.to_be_bytes());
        packet.extend_from_slice(&[0x04, 0xd0, 0, 0, 0x80, 0]);
        packet.extend_from_slice(&rdlength.to_be_bytes());
        packet.extend_from_slice(options);
        packet
    }

    /// Whether `answer` carries an OPT record, and with the DO bit, as hickory reads it.
    fn answer_opt(answer: &[u8]) -> Option<bool> {
        let parsed = Message::from_vec(answer).expect("hickory reads our answers");
        parsed.edns.map(|edns| edns.flags().dnssec_ok)
    }

    /// Malformed queries that carry OPT, each rejected with `rcode`.
    fn malformed_with_opt() -> Vec<(&'static str, Vec<u8>, Rcode)> {
        let plain = query(5, "example.com", 1, None);
        let mut no_question = plain[..HEADER_LEN].to_vec();
        no_question[5] = 0;
        let mut two_questions = plain.clone();
        two_questions.extend_from_slice(&plain[HEADER_LEN..]);
        two_questions[5] = 2;
        let mut status = plain.clone();
        status[2] |= 2 << 3;
        let mut broken_name = plain.clone();
        broken_name[HEADER_LEN] = 0x40;
        vec![
            (
                "no question",
                with_opt(no_question, &[0], &[], 0),
                Rcode::FormErr,
            ),
            (
                "two questions",
                with_opt(two_questions, &[0], &[], 0),
                Rcode::FormErr,
            ),
            (
                "an option running past the end of the message",
                with_opt(plain.clone(), &[0], &[0, 10, 0, 8, 1, 2, 3, 4], 12),
                Rcode::FormErr,
            ),
            (
                "OPT owned by another name than the root",
                with_opt(plain.clone(), &[0xc0, 12], &[], 0),
                Rcode::FormErr,
            ),
            (
                "OPT cut short after its TTL",
                with_opt(plain.clone(), &[0], &[], 0)[..plain.len() + 9].to_vec(),
                Rcode::FormErr,
            ),
            (
                "an unreadable question name",
                with_opt(broken_name, &[0], &[], 0),
                Rcode::FormErr,
            ),
            (
                "opcode STATUS",
                with_opt(status, &[0], &[], 0),
                Rcode::NotImp,
            ),
        ]
    }

    #[test]
    fn rejections_carry_opt_when_the_query_did() {
        for (what, packet, expected) in malformed_with_opt() {
            let Err(Rejection::Answer(answer, rcode)) = parse_query(&packet) else {
                panic!("{what}: expected an answer");
            };
            assert_eq!(rcode, expected, "{what}");
            assert_eq!(header_rcode(&answer), expected.value(), "{what}");
            if what == "an unreadable question name" {
                // Nothing after a name that cannot be walked can be found.
                assert_eq!(answer_opt(&answer), None, "{what}");
                continue;
            }
            assert_eq!(answer_opt(&answer), Some(true), "{what}: OPT with DO");
        }
    }

    #[test]
    fn rejections_carry_no_opt_when_the_query_did_not() {
        for (what, packet, _) in malformed_with_opt() {
            // The same packets with their OPT record's type changed to TXT.
            let mut packet = packet;
            let arcount = read_u16(&packet, 10).unwrap();
            let Some(at) = packet.windows(2).rposition(|w| w == TYPE_OPT.to_be_bytes()) else {
                continue;
            };
            packet[at..at + 2].copy_from_slice(&16u16.to_be_bytes());
            assert_eq!(read_u16(&packet, 10), Some(arcount));
            let Err(Rejection::Answer(answer, _)) = parse_query(&packet) else {
                panic!("{what}: expected an answer");
            };
            assert_eq!(answer_opt(&answer), None, "{what}");
        }
        // OPT in the answer section is no OPT record (RFC 6891 §6.1.1).
        let mut packet = with_opt(query(5, "example.com", 1, None), &[0], &[], 0);
        packet[7] = 1;
        packet[11] = 0;
        let Err(Rejection::Answer(answer, Rcode::FormErr)) = parse_query(&packet) else {
            panic!("expected FORMERR");
        };
        assert_eq!(answer_opt(&answer), None);
    }

    #[test]
    fn every_local_answer_carries_opt_when_the_query_did() {
        let q = parse_query(&query(6, "example.com", 1, Some((1232, true)))).unwrap();
        let plain = parse_query(&query(6, "example.com", 1, None)).unwrap();
        for rcode in [
            Rcode::FormErr,
            Rcode::ServFail,
            Rcode::NotImp,
            Rcode::Refused,
            Rcode::BadVers,
        ] {
            assert_eq!(answer_opt(&q.error_answer(rcode)), Some(true), "{rcode:?}");
            assert_eq!(answer_opt(&plain.error_answer(rcode)), None, "{rcode:?}");
        }
        let axfr = query(6, "example.com", TYPE_AXFR, Some((1232, true)));
        let Err(Rejection::Answer(answer, Rcode::Refused)) = parse_query(&axfr) else {
            panic!("expected REFUSED");
        };
        assert_eq!(answer_opt(&answer), Some(true));
        let mut badvers = query(6, "example.com", 1, Some((1232, true)));
        let version = badvers.len() - 5;
        badvers[version] = 1;
        let Err(Rejection::Answer(answer, Rcode::BadVers)) = parse_query(&badvers) else {
            panic!("expected BADVERS");
        };
        assert_eq!(answer_opt(&answer), Some(true));
    }

    #[test]
    fn no_input_makes_parsing_panic() {
        // A cheap deterministic sweep; the fuzz targets go much further.
        let base = query(1, "example.com", 1, Some((1232, true)));
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut packet = base.clone();
            let at = (state as usize) % packet.len();
            packet[at] = (state >> 32) as u8;
            packet.truncate(((state >> 40) as usize) % (base.len() + 1));
            if let Ok(q) = parse_query(&packet) {
                let _ = q.upstream_frame();
                let _ = q.answer_from(&packet);
                let _ = truncate_for_udp(q.error_answer(Rcode::ServFail), 12);
            }
            let _ = response_matches(&packet, &base[12..]);
        }
    }
}
