//! A response read for validation: the records of its answer and authority sections, grouped
//! into RRsets with the RRSIGs that cover them. Records stay where they are in the message
//! (their data is sliced, never copied); owner names are read once, decompressed and in lower
//! case. The additional section is not validated (RFC 4035 §3.2.3: AD speaks for the answer and
//! authority sections) and is not read.

use crate::dnssec::name::read_name;

pub(crate) const TYPE_CNAME: u16 = 5;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_DNAME: u16 = 39;
pub(crate) const TYPE_DS: u16 = 43;
pub(crate) const TYPE_RRSIG: u16 = 46;
pub(crate) const TYPE_NSEC: u16 = 47;
pub(crate) const TYPE_NSEC3: u16 = 50;
const HEADER_LEN: usize = 12;
/// Most records read from one message: far more than any answer of a stub's question has,
/// and a bound on the work a crafted one can cause.
const MAX_RECORDS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Answer,
    Authority,
}

/// One record, located in the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    pub(crate) section: Section,
    /// The owner name's place in [`Message::names`].
    owner: (u16, u16),
    pub(crate) rtype: u16,
    pub(crate) class: u16,
    pub(crate) ttl: u32,
    /// Where the data starts in the message, and its length.
    pub(crate) rdata_at: usize,
    pub(crate) rdata_len: usize,
    /// For an RRSIG, the type it covers.
    pub(crate) covered: u16,
}

/// Records with the same owner, type and class, in one section, and their signatures.
#[derive(Debug, Clone)]
pub(crate) struct RRset {
    pub(crate) section: Section,
    pub(crate) rtype: u16,
    pub(crate) class: u16,
    /// Indices into [`Message::records`]; never empty.
    pub(crate) records: Vec<u16>,
    /// The RRSIGs covering this RRset (same owner, section and class).
    pub(crate) sigs: Vec<u16>,
}

/// A response, read.
pub(crate) struct Message<'m> {
    pub(crate) bytes: &'m [u8],
    pub(crate) rcode: u16,
    /// Owner names, one after the other.
    names: Vec<u8>,
    pub(crate) records: Vec<Record>,
    pub(crate) rrsets: Vec<RRset>,
}

/// A message that cannot be read. Upstream answers were already checked to be well formed, so
/// this means a name or a record that passes that check but not this stricter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

impl<'m> Message<'m> {
    pub(crate) fn parse(bytes: &'m [u8]) -> Result<Message<'m>, Malformed> {
        let count = |at: usize| {
            bytes
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                .ok_or(Malformed)
        };
        let (questions, answers, authority) = (count(4)?, count(6)?, count(8)?);
        if answers + authority > MAX_RECORDS {
            return Err(Malformed);
        }
        let rcode = u16::from(bytes[3] & 0x0f);
        let mut pos = HEADER_LEN;
        let mut scratch = Vec::new();
        for _ in 0..questions {
            scratch.clear();
            pos = read_name(bytes, pos, &mut scratch).ok_or(Malformed)? + 4;
        }
        let mut names = Vec::with_capacity(64);
        let mut records = Vec::with_capacity(answers + authority);
        for index in 0..answers + authority {
            let start = names.len();
            pos = read_name(bytes, pos, &mut names).ok_or(Malformed)?;
            // Consecutive records usually share their owner: keep one copy.
            let owner = match records.last() {
                Some(&Record { owner: (s, e), .. })
                    if names[usize::from(s)..usize::from(e)] == names[start..] =>
                {
                    names.truncate(start);
                    (s, e)
                }
                _ => (
                    u16::try_from(start).map_err(|_| Malformed)?,
                    u16::try_from(names.len()).map_err(|_| Malformed)?,
                ),
            };
            let field = |at: usize| {
                bytes
                    .get(at..at + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or(Malformed)
            };
            let rtype = field(pos)?;
            let class = field(pos + 2)?;
            let ttl = u32::from(field(pos + 4)?) << 16 | u32::from(field(pos + 6)?);
            let rdata_len = usize::from(field(pos + 8)?);
            let rdata_at = pos + 10;
            if rdata_at + rdata_len > bytes.len() {
                return Err(Malformed);
            }
            let covered = match rtype {
                TYPE_RRSIG => field(rdata_at)?,
                _ => 0,
            };
            records.push(Record {
                section: if index < answers {
                    Section::Answer
                } else {
                    Section::Authority
                },
                owner,
                rtype,
                class,
                ttl,
                rdata_at,
                rdata_len,
                covered,
            });
            pos = rdata_at + rdata_len;
        }
        let mut message = Message {
            bytes,
            rcode,
            names,
            records,
            rrsets: Vec::new(),
        };
        message.group();
        Ok(message)
    }

    /// Groups the records into RRsets, in order of first appearance.
    fn group(&mut self) {
        // Sort indices by (section, owner, type or covered type, class); RRsets are then runs.
        let key = |r: &Record| {
            let t = match r.rtype {
                TYPE_RRSIG => r.covered,
                other => other,
            };
            (r.section, t, r.class)
        };
        let mut order: Vec<u16> = (0..self.records.len() as u16).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&self.records[usize::from(a)], &self.records[usize::from(b)]);
            key(ra)
                .cmp(&key(rb))
                .then_with(|| self.owner(ra).cmp(self.owner(rb)))
                .then(a.cmp(&b))
        });
        let mut rrsets: Vec<RRset> = Vec::new();
        let mut previous: Option<u16> = None;
        for index in order {
            let record = &self.records[usize::from(index)];
            let (t, sig) = match record.rtype {
                TYPE_RRSIG => (record.covered, true),
                other => (other, false),
            };
            let same = previous.is_some_and(|p| {
                let p = &self.records[usize::from(p)];
                let pt = match p.rtype {
                    TYPE_RRSIG => p.covered,
                    other => other,
                };
                p.section == record.section
                    && pt == t
                    && p.class == record.class
                    && self.owner(p) == self.owner(record)
            });
            if !same {
                rrsets.push(RRset {
                    section: record.section,
                    rtype: t,
                    class: record.class,
                    records: Vec::new(),
                    sigs: Vec::new(),
                });
            }
            previous = Some(index);
            if let Some(rrset) = rrsets.last_mut() {
                if sig {
                    rrset.sigs.push(index);
                } else {
                    rrset.records.push(index);
                }
            }
        }
        // RRSIGs with nothing to cover (a stripped RRset) are of no use.
        rrsets.retain(|r| !r.records.is_empty());
        rrsets.sort_by_key(|r| r.records[0]);
        self.rrsets = rrsets;
    }

    /// A record's owner name (lower case, uncompressed).
    pub(crate) fn owner(&self, record: &Record) -> &[u8] {
        &self.names[usize::from(record.owner.0)..usize::from(record.owner.1)]
    }

    /// An RRset's owner name.
    pub(crate) fn rrset_owner(&self, rrset: &RRset) -> &[u8] {
        self.owner(&self.records[usize::from(rrset.records[0])])
    }

    pub(crate) fn record(&self, index: u16) -> &Record {
        &self.records[usize::from(index)]
    }

    /// A record's data as it is in the message.
    pub(crate) fn rdata(&self, record: &Record) -> &'m [u8] {
        &self.bytes[record.rdata_at..record.rdata_at + record.rdata_len]
    }

    /// The RRsets of `section` with this owner and type.
    pub(crate) fn find(&self, section: Section, owner: &[u8], rtype: u16) -> Option<&RRset> {
        self.rrsets
            .iter()
            .find(|r| r.section == section && r.rtype == rtype && self.rrset_owner(r) == owner)
    }

    /// The smallest TTL of an RRset's records.
    pub(crate) fn ttl(&self, rrset: &RRset) -> u32 {
        rrset
            .records
            .iter()
            .map(|&i| self.record(i).ttl)
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_group_into_rrsets_with_their_signatures() {
        // Question www.example. A; answer: two A records (one owner spelled in capitals),
        // their RRSIG, a CNAME elsewhere; authority: an RRSIG over nothing present.
        let mut m = vec![0, 0, 0x81, 0x83, 0, 1, 0, 4, 0, 1, 0, 0];
        m.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 46, 0, 1, 0, 0, 0, 60, 0, 2, 0, 1]);
        m.extend_from_slice(b"\x03WWW\x07EXAMPLE\x00");
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 2]);
        m.extend_from_slice(&[0xc0, 16, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0xc0, 16, 0, 46, 0, 1, 0, 0, 0, 60, 0, 2, 0, 6]);
        let message = Message::parse(&m).unwrap();
        assert_eq!(message.rcode, 3);
        assert_eq!(message.records.len(), 5);
        assert_eq!(message.rrsets.len(), 2, "the lone RRSIG makes no RRset");
        let a = &message.rrsets[0];
        assert_eq!((a.rtype, a.records.len(), a.sigs.len()), (1, 2, 1));
        assert_eq!(message.ttl(a), 30);
        assert_eq!(message.rrset_owner(a), b"\x03www\x07example\x00");
        let cname = &message.rrsets[1];
        assert_eq!(cname.rtype, TYPE_CNAME);
        assert_eq!(message.rrset_owner(cname), b"\x07example\x00");
        assert!(
            message
                .find(Section::Answer, b"\x07example\x00", TYPE_CNAME)
                .is_some()
        );
        // Two RRsets of one type, their RRSIGs after both: each gets its own.
        let mut m2 = vec![0, 0, 0x81, 0x83, 0, 0, 0, 0, 0, 4, 0, 0];
        for owner in [b"\x01a\x00", b"\x01b\x00"] {
            m2.extend_from_slice(owner);
            m2.extend_from_slice(&[0, 47, 0, 1, 0, 0, 0, 60, 0, 1, 0]);
        }
        for owner in [b"\x01b\x00", b"\x01a\x00"] {
            m2.extend_from_slice(owner);
            m2.extend_from_slice(&[0, 46, 0, 1, 0, 0, 0, 60, 0, 2, 0, 47]);
        }
        let two = Message::parse(&m2).unwrap();
        assert_eq!(two.rrsets.len(), 2);
        for rrset in &two.rrsets {
            assert_eq!((rrset.records.len(), rrset.sigs.len()), (1, 1));
            let sig = two.record(rrset.sigs[0]);
            assert_eq!(two.owner(sig), two.rrset_owner(rrset));
        }
        for cut in 12..m.len() {
            assert!(Message::parse(&m[..cut]).is_err(), "cut at {cut}");
        }
    }
}
