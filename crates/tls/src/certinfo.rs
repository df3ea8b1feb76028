//! The few facts read from an X.509 certificate: serial number, subject
//! common name, DNS subject alternative names and expiry (`notAfter`). A
//! minimal DER walk over the `TBSCertificate` (RFC 5280 §4.1); the
//! signature and everything else is verified by rustls/webpki, never here.

/// What [`parse`] reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial_hex: String,
    /// Subject common name (the first CN), if any.
    pub subject_cn: Option<String>,
    /// The `dNSName` entries of the subject alternative name extension, in
    /// certificate order (IP addresses and other name forms are left out).
    pub dns_names: Vec<String>,
    /// `notBefore` as seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// `notAfter` as seconds since the Unix epoch.
    pub not_after_unix: i64,
}

const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_VERSION: u8 = 0xa0;
const TAG_OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` of a v3 `TBSCertificate`.
const TAG_EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` in a `GeneralName` (implicit, primitive).
const TAG_DNS_NAME: u8 = 0x82;
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element: (tag, contents, rest).
fn tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = buf.split_first().ok_or("truncated DER (no tag)")?;
    let (&first, rest) = rest.split_first().ok_or("truncated DER (no length)")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("truncated DER element".into());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(buf: &'a [u8], want: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let (tag, body, rest) = tlv(buf)?;
    if tag != want {
        return Err(format!(
            "expected {what} (tag {want:#x}), found tag {tag:#x}"
        ));
    }
    Ok((body, rest))
}

/// Parse a DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
    let (cert, _) = expect(der, TAG_SEQUENCE, "Certificate")?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE, "TBSCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&TAG_VERSION) {
        rest = tlv(rest)?.2;
    }
    let (serial, rest) = expect(rest, TAG_INTEGER, "serialNumber")?;
    let (_sig_alg, rest) = expect(rest, TAG_SEQUENCE, "signature algorithm")?;
    let (_issuer, rest) = expect(rest, TAG_SEQUENCE, "issuer")?;
    let (validity, rest) = expect(rest, TAG_SEQUENCE, "validity")?;
    let (subject, rest) = expect(rest, TAG_SEQUENCE, "subject")?;
    let (_spki, mut rest) = expect(rest, TAG_SEQUENCE, "subjectPublicKeyInfo")?;
    // Optional issuerUniqueID [1] and subjectUniqueID [2], then extensions [3].
    let mut dns_names = Vec::new();
    while let Some(&tag) = rest.first() {
        let (_, body, after) = tlv(rest)?;
        rest = after;
        if tag == TAG_EXTENSIONS {
            dns_names = san_dns_names(body)?;
        }
    }
    let (t1, body1, after) = tlv(validity)?;
    let (t2, body2, _) = tlv(after)?;
    let not_before_unix = parse_time(t1, body1)?;
    let not_after_unix = parse_time(t2, body2)?;
    let mut serial = serial;
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    let serial_hex = serial.iter().map(|b| format!("{b:02x}")).collect();
    Ok(CertInfo {
        serial_hex,
        subject_cn: common_name(subject)?,
        dns_names,
        not_before_unix,
        not_after_unix,
    })
}

fn common_name(mut rdns: &[u8]) -> Result<Option<String>, String> {
    while !rdns.is_empty() {
        let (set, rest) = expect(rdns, TAG_SET, "RelativeDistinguishedName")?;
        rdns = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (atv, rest) = expect(attrs, TAG_SEQUENCE, "AttributeTypeAndValue")?;
            attrs = rest;
            let (oid, value) = expect(atv, TAG_OID, "attribute type")?;
            if oid == OID_CN {
                let (_, v, _) = tlv(value)?;
                return Ok(Some(String::from_utf8_lossy(v).into_owned()));
            }
        }
    }
    Ok(None)
}

/// The `dNSName`s of the subjectAltName extension in `[3] { Extensions }`.
fn san_dns_names(explicit: &[u8]) -> Result<Vec<String>, String> {
    let (mut exts, _) = expect(explicit, TAG_SEQUENCE, "Extensions")?;
    while !exts.is_empty() {
        let (ext, rest) = expect(exts, TAG_SEQUENCE, "Extension")?;
        exts = rest;
        let (oid, mut fields) = expect(ext, TAG_OID, "extnID")?;
        if oid != OID_SAN {
            continue;
        }
        // `critical BOOLEAN DEFAULT FALSE` may come before the value.
        if fields.first() != Some(&TAG_OCTET_STRING) {
            fields = tlv(fields)?.2;
        }
        let (value, _) = expect(fields, TAG_OCTET_STRING, "extnValue")?;
        let (mut names, _) = expect(value, TAG_SEQUENCE, "GeneralNames")?;
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = tlv(names)?;
            names = rest;
            if tag == TAG_DNS_NAME {
                out.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

fn parse_time(tag: u8, body: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(body).map_err(|_| "time is not ASCII")?;
    let s = s.strip_suffix('Z').ok_or("time is not in UTC (no Z)")?;
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .and_then(|d| d.parse::<i64>().ok())
            .ok_or_else(|| format!("bad time {s:?}"))
    };
    let (year, off) = match tag {
        TAG_UTC_TIME => {
            let y = num(0..2)?;
            (if y >= 50 { 1900 + y } else { 2000 + y }, 2)
        }
        TAG_GENERALIZED_TIME => (num(0..4)?, 4),
        other => return Err(format!("expected a time, found tag {other:#x}")),
    };
    let (mo, d) = (num(off..off + 2)?, num(off + 2..off + 4)?);
    let (h, mi, se) = (
        num(off + 4..off + 6)?,
        num(off + 6..off + 8)?,
        num(off + 8..off + 10)?,
    );
    Ok(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_serial_cn_and_expiry_of_an_rcgen_certificate() {
        let mut p = rcgen::CertificateParams::new(vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "n1.example".into(),
        ])
        .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "member-1");
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x12, 0xab]));
        p.not_before = rcgen::date_time_ymd(2001, 2, 3);
        p.not_after = rcgen::date_time_ymd(2061, 3, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let info = super::parse(cert.der()).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("member-1"));
        assert_eq!(info.serial_hex, "12ab");
        // The IP address SAN is not a DNS name.
        assert_eq!(info.dns_names, ["localhost", "n1.example"]);
        assert_eq!(info.not_before_unix, 981_158_400);
        assert_eq!(info.not_after_unix, 2_876_860_800);
        assert!(super::parse(&cert.der()[..40]).is_err());
    }

    #[test]
    fn a_certificate_without_alternative_names_has_no_dns_names() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "n2");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let info = super::parse(cert.der()).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("n2"));
        assert!(info.dns_names.is_empty());
    }
}
