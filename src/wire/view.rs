//! What validation changes on the wire: the query sent upstream when dns-proxy validates (DO
//! and CD set, RFC 6840 §5.9), the queries of its own for keys and delegations, and the answer
//! a client sees of a validated response: AD only when proven and asked for, DNSSEC records
//! only for a client that set DO (RFC 4035 §3.2.1), an Extended DNS Error (RFC 8914) saying
//! why an answer failed or is insecure.

use std::sync::Arc;

use crate::wire::dns::{
    ADVERTISED_UDP_PAYLOAD, Edns, FLAG_AD, FLAG_CD, FLAG_RD, HEADER_LEN, Query, Rcode, Response,
    TYPE_OPT, error_answer, push_opt_header,
};
use crate::wire::field::{read_u16, skip_name};
use crate::wire::rdata::{Field, layout};

const TYPE_RRSIG: u16 = 46;
const TYPE_NSEC: u16 = 47;
const TYPE_NSEC3: u16 = 50;
const OPTION_EDE: u16 = 15;
/// Longest EDE text sent: enough for a zone name and a reason, short enough for any answer.
const MAX_EDE_TEXT: usize = 160;

/// How a client asked, as far as the answer it gets depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    /// DO: the client wants the DNSSEC records.
    pub(crate) dnssec_ok: bool,
    /// Set AD: the answer was proven, and the client set DO or AD (RFC 6840 §5.7).
    pub(crate) authentic: bool,
    /// The client's CD bit, echoed.
    pub(crate) checking_disabled: bool,
}

impl Query {
    /// The query sent upstream for this one when answers are validated here: its question and
    /// RD bit, with CD and DO set and AD clear, whatever the client set, so that every client
    /// shares one upstream answer and a validating upstream hands over bogus data too.
    pub(crate) fn validating(&self) -> Query {
        let question = self.question();
        let mut raw = Vec::with_capacity(HEADER_LEN + question.len() + 11);
        raw.extend_from_slice(&self.raw[..2]);
        raw.push(self.raw[2] & FLAG_RD);
        raw.push(FLAG_CD);
        raw.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
        raw.extend_from_slice(question);
        push_opt_header(&mut raw, 0, true, 0);
        Query {
            question_end: HEADER_LEN + question.len(),
            raw,
            edns: Some(Edns {
                payload: ADVERTISED_UDP_PAYLOAD,
                dnssec_ok: true,
            }),
        }
    }

    /// A query of dns-proxy's own, for validation: `name` (wire form, uncompressed), `qtype`,
    /// class IN, with RD, CD and DO set.
    pub(crate) fn internal(name: &[u8], qtype: u16) -> Query {
        let mut raw = Vec::with_capacity(HEADER_LEN + name.len() + 4 + 11);
        raw.extend_from_slice(&[0, 0, FLAG_RD, FLAG_CD, 0, 1, 0, 0, 0, 0, 0, 1]);
        raw.extend_from_slice(name);
        raw.extend_from_slice(&qtype.to_be_bytes());
        raw.extend_from_slice(&[0, 1]);
        let question_end = raw.len();
        push_opt_header(&mut raw, 0, true, 0);
        Query {
            raw,
            question_end,
            edns: Some(Edns {
                payload: ADVERTISED_UDP_PAYLOAD,
                dnssec_ok: true,
            }),
        }
    }

    /// Whether the client set DO.
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// Whether the client set CD.
    pub(crate) fn checking_disabled(&self) -> bool {
        self.raw[3] & FLAG_CD != 0
    }

    /// Whether the client would take AD: it set DO or AD (RFC 6840 §5.7).
    pub(crate) fn wants_ad(&self) -> bool {
        self.dnssec_ok() || self.raw[3] & FLAG_AD != 0
    }

    /// An error answer with `rcode` and, if given, an Extended DNS Error, as a response any
    /// client asking this way can be answered from (see [`Query::answer`]): it always holds OPT,
    /// which a client that sent none does not get.
    pub(crate) fn error_response(&self, rcode: Rcode, ede: Option<(u16, &str)>) -> Response {
        let edns = Edns {
            payload: ADVERTISED_UDP_PAYLOAD,
            dnssec_ok: self.dnssec_ok(),
        };
        let mut bytes = error_answer(&self.raw, rcode, Some(edns));
        let opt_start = bytes.len() - 11;
        if let Some((code, text)) = ede {
            push_ede(&mut bytes, opt_start, code, text);
        }
        Response {
            question_end: self.question_end,
            opt_start: Some(opt_start),
            bytes,
        }
    }
}

impl Response {
    /// This response as a client asking with `view` gets it: AD and CD set as `view` says,
    /// the OPT record's DO bit echoing the client's, RRSIG, NSEC and NSEC3 records left out
    /// unless the client set DO or asked for that type (`qtype`), and `ede` added to the OPT
    /// record. The same response when nothing changes.
    pub(crate) fn for_client(
        self: &Arc<Self>,
        qtype: u16,
        view: View,
        ede: Option<(u16, &str)>,
    ) -> Arc<Response> {
        let stripped = match view.dnssec_ok {
            true => None,
            false => strip_dnssec(self, qtype),
        };
        let mut flags = self.bytes[3] & !(FLAG_AD | FLAG_CD);
        if view.authentic {
            flags |= FLAG_AD;
        }
        if view.checking_disabled {
            flags |= FLAG_CD;
        }
        // DO lives in the first byte of the OPT record's flags, 7 bytes into the record.
        let do_at = self.opt_start.map(|start| start + 7);
        let do_as_asked = do_at.is_none_or(|at| (self.bytes[at] & 0x80 != 0) == view.dnssec_ok);
        if stripped.is_none() && ede.is_none() && flags == self.bytes[3] && do_as_asked {
            return self.clone();
        }
        let mut response = stripped.unwrap_or_else(|| Response::clone(self));
        response.bytes[3] = flags;
        if let Some(at) = response.opt_start.map(|start| start + 7) {
            response.bytes[at] =
                (response.bytes[at] & 0x7f) | if view.dnssec_ok { 0x80 } else { 0 };
        }
        if let Some((code, text)) = ede {
            match response.opt_start {
                Some(start) => push_ede(&mut response.bytes, start, code, text),
                None => {
                    // Upstream answers carry OPT, as they answer queries with OPT; a response
                    // without one gets ours.
                    let start = response.bytes.len();
                    push_opt_header(&mut response.bytes, 0, view.dnssec_ok, 0);
                    push_ede(&mut response.bytes, start, code, text);
                    let count = read_u16(&response.bytes, 10).unwrap_or(0).saturating_add(1);
                    response.bytes[10..12].copy_from_slice(&count.to_be_bytes());
                    response.opt_start = Some(start);
                }
            }
        }
        Arc::new(response)
    }

    /// This response with AD clear: for answers that were not validated here.
    pub(crate) fn without_ad(self: &Arc<Self>) -> Arc<Response> {
        if self.bytes[3] & FLAG_AD == 0 {
            return self.clone();
        }
        let mut response = Response::clone(self);
        response.bytes[3] &= !FLAG_AD;
        Arc::new(response)
    }
}

/// Appends an Extended DNS Error option to the OPT record at `opt_start`, the message's last
/// record.
fn push_ede(bytes: &mut Vec<u8>, opt_start: usize, code: u16, text: &str) {
    let mut end = text.len().min(MAX_EDE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text.as_bytes()[..end];
    bytes.extend_from_slice(&OPTION_EDE.to_be_bytes());
    bytes.extend_from_slice(&(2 + text.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&code.to_be_bytes());
    bytes.extend_from_slice(text);
    let rdlength = (bytes.len() - opt_start - 11) as u16;
    bytes[opt_start + 9..opt_start + 11].copy_from_slice(&rdlength.to_be_bytes());
}

/// `response` without its RRSIG, NSEC and NSEC3 records (but those of type `keep`), or `None`
/// when it has none. Names in the records kept may point into records removed, or into
/// records that moved: each pointer is redirected to the same name where it now is, or the
/// name written out in full where it no longer exists.
fn strip_dnssec(response: &Response, keep: u16) -> Option<Response> {
    let bytes = &response.bytes;
    let counts = [6, 8, 10].map(|at| usize::from(read_u16(bytes, at).unwrap_or(0)));
    let total = counts.iter().sum::<usize>();
    // Each record: start, end, type.
    let mut records = Vec::with_capacity(total);
    let mut pos = response.question_end;
    for _ in 0..total {
        let name_end = skip_name(bytes, pos)?;
        let rtype = read_u16(bytes, name_end)?;
        let end = name_end + 10 + usize::from(read_u16(bytes, name_end + 8)?);
        records.push((pos, end, rtype));
        pos = end;
    }
    let removed =
        |rtype: u16| matches!(rtype, TYPE_RRSIG | TYPE_NSEC | TYPE_NSEC3) && rtype != keep;
    if !records.iter().any(|r| removed(r.2)) {
        return None;
    }
    let mut out = Rewriter {
        old: bytes,
        out: Vec::with_capacity(bytes.len()),
        copied: Vec::new(),
    };
    out.verbatim(0, response.question_end);
    let mut new_counts = [0u16; 3];
    let mut opt_start = None;
    for (index, &(start, end, rtype)) in records.iter().enumerate() {
        if removed(rtype) {
            continue;
        }
        let section = if index < counts[0] {
            0
        } else if index < counts[0] + counts[1] {
            1
        } else {
            2
        };
        new_counts[section] += 1;
        let record_start = out.out.len();
        if rtype == TYPE_OPT && Some(start) == response.opt_start {
            opt_start = Some(record_start);
        }
        let name_end = out.name(start)?;
        out.verbatim(name_end, name_end + 8);
        let rdata_at = name_end + 10;
        let length_at = out.out.len();
        out.out.extend_from_slice(&[0, 0]);
        let data_start = out.out.len();
        if out.rdata(rtype, rdata_at, end).is_none() {
            out.out.truncate(data_start);
            out.verbatim(rdata_at, end);
        }
        let length = u16::try_from(out.out.len() - data_start).ok()?;
        out.out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
    }
    let mut bytes = out.out;
    for (i, count) in new_counts.iter().enumerate() {
        bytes[6 + 2 * i..8 + 2 * i].copy_from_slice(&count.to_be_bytes());
    }
    Some(Response {
        bytes,
        question_end: response.question_end,
        opt_start,
    })
}

/// Copies parts of a message into a new one, remembering where each copied byte went.
struct Rewriter<'a> {
    old: &'a [u8],
    out: Vec<u8>,
    /// Copied ranges: old start, old end, new start; in increasing order.
    copied: Vec<(usize, usize, usize)>,
}

impl Rewriter<'_> {
    fn verbatim(&mut self, start: usize, end: usize) {
        if let Some(part) = self.old.get(start..end) {
            self.copied.push((start, end, self.out.len()));
            self.out.extend_from_slice(part);
        }
    }

    /// Where an old offset now is, if the byte there was copied.
    fn moved(&self, old: usize) -> Option<usize> {
        let i = self
            .copied
            .partition_point(|&(start, _, _)| start <= old)
            .checked_sub(1)?;
        let (start, end, new) = self.copied[i];
        (old < end).then_some(new + old - start)
    }

    /// Copies the name at `pos`; returns the old offset just past it.
    fn name(&mut self, mut pos: usize) -> Option<usize> {
        let mut end = None;
        let mut limit = pos;
        loop {
            let len = *self.old.get(pos)?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    self.verbatim(pos, pos + 1);
                    return Some(end.unwrap_or(pos + 1));
                }
                0x00 => {
                    let next = pos + 1 + usize::from(len);
                    self.old.get(pos..next)?;
                    self.verbatim(pos, next);
                    pos = next;
                }
                0xc0 => {
                    let target = usize::from(read_u16(self.old, pos)? & 0x3fff);
                    end.get_or_insert(pos + 2);
                    if let Some(new) = self.moved(target).filter(|&n| n < 0x3fff) {
                        self.out
                            .extend_from_slice(&(0xc000 | new as u16).to_be_bytes());
                        return end;
                    }
                    // The name pointed to is gone: write it out from there.
                    if target >= limit {
                        return None;
                    }
                    limit = target;
                    pos = target;
                }
                _ => return None,
            }
        }
    }

    /// Copies the data of a record of `rtype` from `start` to `end`, redirecting the names it
    /// holds; `None` when its layout does not fit (the caller copies it as it is).
    fn rdata(&mut self, rtype: u16, start: usize, end: usize) -> Option<()> {
        let fields = layout(rtype)?;
        let mut pos = start;
        for field in fields {
            match *field {
                Field::Name => pos = self.name(pos)?,
                Field::Fixed(n) => {
                    self.verbatim(pos, pos + n);
                    pos += n;
                }
                Field::Text => {
                    let n = 1 + usize::from(*self.old.get(pos)?);
                    self.verbatim(pos, pos + n);
                    pos += n;
                }
            }
            if pos > end {
                return None;
            }
        }
        (pos == end).then_some(())
    }
}

/// Whether an OPT record's flags have DO set, from its TTL field at `ttl_at`.
#[cfg(test)]
fn opt_do(bytes: &[u8], ttl_at: usize) -> bool {
    read_u16(bytes, ttl_at + 2).is_some_and(|flags| flags & crate::wire::dns::EDNS_DO != 0)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Message;

    use super::*;
    use crate::wire::dns::parse_query;

    fn query(flags3: u8, edns: Option<bool>) -> Query {
        let mut q = vec![
            0,
            7,
            1,
            flags3,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        q.extend_from_slice(b"\x07example\x00\x00\x01\x00\x01");
        if let Some(dnssec_ok) = edns {
            q.extend_from_slice(&[
                0,
                0,
                41,
                0x10,
                0,
                0,
                0,
                if dnssec_ok { 0x80 } else { 0 },
                0,
                0,
                0,
            ]);
        }
        parse_query(&q).unwrap()
    }

    #[test]
    fn the_validating_query_sets_do_and_cd_whatever_the_client_set() {
        for (flags3, edns) in [(0, None), (FLAG_AD, Some(false)), (FLAG_CD, Some(true))] {
            let upstream = query(flags3, edns).validating();
            let frame = upstream.upstream_frame();
            let parsed = Message::from_vec(&frame[2..]).unwrap();
            assert!(parsed.metadata.checking_disabled && !parsed.metadata.authentic_data);
            assert!(parsed.metadata.recursion_desired);
            assert!(parsed.edns.unwrap().flags().dnssec_ok);
            assert_eq!(parsed.queries[0].name().to_ascii(), "example.");
        }
        let internal = Query::internal(b"\x04test\x00", 43);
        let parsed = Message::from_vec(&internal.upstream_frame()[2..]).unwrap();
        assert!(parsed.metadata.checking_disabled && parsed.edns.unwrap().flags().dnssec_ok);
        assert_eq!(u16::from(parsed.queries[0].query_type()), 43);
    }

    #[test]
    fn the_flags_a_client_sees_follow_its_view() {
        let q = query(0, Some(true));
        let mut upstream = q.error_answer(Rcode::ServFail);
        upstream[3] = 0x80 | FLAG_AD | FLAG_CD;
        let response = Arc::new(Response::prepare(&upstream).unwrap());
        let view = |authentic, checking_disabled| View {
            dnssec_ok: true,
            authentic,
            checking_disabled,
        };
        assert_eq!(
            response.for_client(1, view(false, false), None).bytes[3],
            0x80
        );
        assert_eq!(
            response.for_client(1, view(true, true), None).bytes[3],
            0x80 | FLAG_AD | FLAG_CD
        );
        assert_eq!(response.without_ad().bytes[3], 0x80 | FLAG_CD);
    }

    #[test]
    fn an_extended_error_goes_into_opt() {
        let q = query(FLAG_CD, Some(true));
        let response = q.error_response(
            Rcode::ServFail,
            Some((7, "expired.test.: signature expired")),
        );
        let parsed = Message::from_vec(response.bytes()).unwrap();
        assert_eq!(u16::from(parsed.metadata.response_code), 2);
        assert!(parsed.metadata.checking_disabled);
        let edns = parsed.edns.unwrap();
        assert!(edns.flags().dnssec_ok);
        let option = edns
            .options()
            .as_ref()
            .iter()
            .find(|(code, _)| u16::from(*code) == OPTION_EDE);
        assert!(option.is_some(), "{edns:?}");
        let opt_at = response.opt_start.unwrap();
        assert!(opt_do(response.bytes(), opt_at + 5));
        // A client without EDNS gets neither OPT nor the EDE.
        let plain = query(0, None);
        let answer = plain.answer(&plain.error_response(Rcode::ServFail, Some((6, "x"))));
        assert!(Message::from_vec(&answer).unwrap().edns.is_none());
        // Long texts are cut on a character boundary.
        let long = "é".repeat(200);
        let response = q.error_response(Rcode::ServFail, Some((6, &long)));
        assert!(Message::from_vec(response.bytes()).is_ok());
    }

    /// A response to example. A: an A record, its RRSIG, a CNAME-free authority with an NSEC
    /// whose owner later names point into, and an additional A whose owner points into the
    /// NSEC's next name; then OPT.
    fn signed_response() -> Vec<u8> {
        let mut m = vec![0, 7, 0x81, 0x80, 0, 1, 0, 2, 0, 2, 0, 2];
        m.extend_from_slice(b"\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        let mut rrsig = vec![0, 1, 13, 1, 0, 0, 0, 60, 0, 0, 0, 2, 0, 0, 0, 1, 0, 1];
        rrsig.extend_from_slice(b"\x07example\x00");
        rrsig.extend_from_slice(&[5; 8]);
        m.extend_from_slice(&[0xc0, 12, 0, 46, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(rrsig.len() as u16).to_be_bytes());
        m.extend_from_slice(&rrsig);
        // Authority: NSEC at a.example. (next ns.example.), NS example. -> ns.<ptr into NSEC>.
        let nsec_at = m.len();
        m.extend_from_slice(b"\x01a\xc0\x0c\x00\x2f\x00\x01\x00\x00\x00\x3c");
        let next_at = m.len() + 2;
        let nsec_rdata = b"\x02ns\x07example\x00\x00\x01\x40";
        m.extend_from_slice(&(nsec_rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(nsec_rdata);
        let _ = nsec_at;
        m.extend_from_slice(&[0xc0, 12, 0, 2, 0, 1, 0, 0, 0, 60, 0, 2]);
        m.extend_from_slice(&(0xc000u16 | next_at as u16).to_be_bytes());
        // Additional: ns.example. A, owner a pointer into the NSEC's next name.
        m.extend_from_slice(&(0xc000u16 | next_at as u16).to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        m
    }

    #[test]
    fn dnssec_records_are_stripped_for_clients_without_do_and_pointers_still_hold() {
        let upstream = Arc::new(Response::prepare(&signed_response()).unwrap());
        let view = View {
            dnssec_ok: false,
            authentic: false,
            checking_disabled: false,
        };
        let stripped = upstream.for_client(1, view, Some((6, "x")));
        let parsed = Message::from_vec(stripped.bytes()).expect("still well formed");
        assert_eq!(parsed.answers.len(), 1);
        assert_eq!(parsed.authorities.len(), 1);
        let ns = format!("{:?}", parsed.authorities[0].data);
        assert!(ns.contains("ns.example."), "{ns}");
        assert_eq!(parsed.additionals[0].name.to_ascii(), "ns.example.");
        assert!(parsed.edns.is_some());
        Response::prepare(stripped.bytes()).expect("prepared again");
        // Asking for NSEC keeps NSEC; with DO nothing is stripped.
        let nsec = upstream.for_client(47, view, None);
        assert_eq!(
            Message::from_vec(nsec.bytes()).unwrap().authorities.len(),
            2
        );
        let with_do = upstream.for_client(
            1,
            View {
                dnssec_ok: true,
                ..view
            },
            None,
        );
        assert_eq!(with_do.bytes(), upstream.bytes());
    }
}
