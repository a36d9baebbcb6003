//! Client addresses: the networks a key may be used from ([`Networks`]), and who the client of a
//! request is ([`resolve`]).
//!
//! A [`KeyRecord`](crate::key::KeyRecord) may list the networks its key may be used from
//! ([`allowed_ips`](crate::key::KeyRecord::allowed_ips)); the
//! [`AuthLayer`](crate::auth::AuthLayer) turns the key away from any other address with 403 (see
//! [IP allowlists](crate::store#ip-allowlists)).
//!
//! The client's address is found in this order:
//!
//! 1. **The peer**, the other end of the connection, from the request's extensions: a
//!    [`ClientAddr`] that the application put there wins; else axum's
//!    `ConnectInfo<SocketAddr>` (feature `axum`, when the app is served with
//!    `into_make_service_with_connect_info::<SocketAddr>()`); else tonic's `TcpConnectInfo`
//!    (feature `tonic-server`).
//! 2. **Behind trusted proxies**: only when the peer is one of the trusted proxies
//!    ([`AuthLayer::trusted_proxies`](crate::auth::AuthLayer::trusted_proxies)), the
//!    `Forwarded` (RFC 7239, its `for=` parameters) and `X-Forwarded-For` headers are read,
//!    every line of them, from the right: the right-most address that is not a trusted proxy is
//!    the client. When every address is a trusted proxy, the left-most is the client, and a
//!    trusted proxy that sends neither header is the client itself. A peer that is no trusted
//!    proxy is the client, whatever headers it sends.
//!
//! What is read is read the safe way: a header can make the address unknown, never one the
//! client chose.
//!
//! - An entry that is `unknown`, an obfuscated identifier (`_hidden`), empty or malformed, met
//!   before the client's address, makes the address unknown. (Entries left of the client's
//!   address are never looked at: the client wrote them.)
//! - A header of more than 8 KiB (all its lines), or one whose client's address is not among
//!   its 32 right-most entries (more than 31 proxies in a row), makes the address unknown.
//! - When both headers are there, both are read, and they must name the same client, or the
//!   address is unknown: a proxy that writes one of them usually passes the other on as the
//!   client sent it, so neither may be believed alone.
//!
//! A key with an allowlist is refused when the client's address is unknown.
//!
//! ```
//! use std::net::IpAddr;
//! use http::Request;
//! use keygate::client_addr::{self, ClientAddr, Networks};
//! use keygate::credential::RequestHead;
//!
//! let proxies: Networks = "10.0.0.0/8".parse()?;
//! let mut req = Request::get("/")
//!     .header("x-forwarded-for", "192.0.2.1, 203.0.113.7, 10.0.0.3")
//!     .body(())?;
//! req.extensions_mut().insert(ClientAddr("10.0.0.2".parse()?)); // a proxy of ours
//! let client = client_addr::resolve(&RequestHead::of(&req), &proxies);
//! assert_eq!(client, Some("203.0.113.7".parse::<IpAddr>()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use http::Extensions;
use http::header::{FORWARDED, HeaderMap, HeaderName};
use serde::{Serialize, Serializer};

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::credential::RequestHead;

/// The most entries of a forwarding header walked through before the client's.
const MAX_HOPS: usize = 32;
/// The most bytes of a forwarding header (all its lines together) that are read.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Optional white space (RFC 9110 §5.6.3).
const OWS: [char; 2] = [' ', '\t'];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address of the connection's peer, put into a request's extensions by the application.
///
/// It wins over the addresses the server's connection info gives (axum's `ConnectInfo`,
/// tonic's `TcpConnectInfo`): insert it from your own middleware where the server gives none,
/// or where you know better (a PROXY-protocol listener, a Unix socket behind a local proxy).
/// It is the peer's address: when it is a trusted proxy, the forwarding headers are still read.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use keygate::client_addr::ClientAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// A list of IP networks (IPv4 and IPv6), such as the networks a key may be used from or the
/// trusted proxies.
///
/// Each entry is an address in CIDR notation (`203.0.113.0/24`, `2001:db8::/32`) or a bare
/// address, which is a network of one (`/32`, `/128`). Entries are kept as networks: the bits
/// after the prefix are cleared (`203.0.113.7/24` is `203.0.113.0/24`), and an IPv4-mapped IPv6
/// network (`::ffff:203.0.113.0/120`) becomes the IPv4 network it maps. The list is kept sorted
/// without duplicates, so two lists of the same networks are equal. Cloning is cheap (an
/// [`Arc`]).
///
/// An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`, as a dual-stack socket reports IPv4
/// peers) is matched as the IPv4 address it maps.
///
/// ```
/// use keygate::client_addr::Networks;
///
/// let networks: Networks = "203.0.113.7/24, 2001:db8::/32, 198.51.100.1".parse()?;
/// assert_eq!(networks.to_string(), "198.51.100.1/32, 203.0.113.0/24, 2001:db8::/32");
/// assert!(networks.contains("203.0.113.200".parse()?));
/// assert!(networks.contains("::ffff:203.0.113.9".parse()?));
/// assert!(networks.contains("2001:db8:1::5".parse()?));
/// assert!(!networks.contains("198.51.100.2".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Networks(Arc<[IpNet]>);

impl Networks {
    /// No networks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses each entry as [`parse_network`] does.
    pub fn parse<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidNetwork> {
        entries
            .into_iter()
            .map(|entry| parse_network(entry.as_ref()))
            .collect()
    }

    /// Whether `addr` is in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        contains(&self.0, addr)
    }

    /// The networks, in order.
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, IpNet>> {
        self.0.iter().copied()
    }

    /// The networks, as a slice.
    pub fn as_slice(&self) -> &[IpNet] {
        &self.0
    }

    /// How many networks.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<IpNet> for Networks {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        let mut v: Vec<IpNet> = iter.into_iter().map(normalise).collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into())
    }
}

impl From<IpNet> for Networks {
    fn from(net: IpNet) -> Self {
        std::iter::once(net).collect()
    }
}

impl<'a> IntoIterator for &'a Networks {
    type Item = IpNet;
    type IntoIter = std::iter::Copied<std::slice::Iter<'a, IpNet>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Networks {
    type Item = IpNet;
    type IntoIter = IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        IntoIter {
            networks: self.0,
            next: 0,
        }
    }
}

/// The networks of a [`Networks`], by value.
#[derive(Debug, Clone)]
pub struct IntoIter {
    networks: Arc<[IpNet]>,
    next: usize,
}

impl Iterator for IntoIter {
    type Item = IpNet;

    fn next(&mut self) -> Option<IpNet> {
        let net = self.networks.get(self.next).copied()?;
        self.next += 1;
        Some(net)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.networks.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for IntoIter {}

/// A comma-separated list (`10.0.0.0/8, 192.0.2.1`), blanks around entries ignored; an empty or
/// blank text is an empty list.
impl FromStr for Networks {
    type Err = InvalidNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::new());
        }
        Self::parse(s.split(',').map(str::trim))
    }
}

/// The networks in CIDR notation, separated by `, ` (which parses back to the same list).
impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Display::fmt(net, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// A list of strings in CIDR notation.
impl Serialize for Networks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

/// A text that is neither an IP address nor a network in CIDR notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not an IP address or a network in CIDR notation (such as 203.0.113.0/24 or \
     2001:db8::/32)"
)]
pub struct InvalidNetwork {
    text: Box<str>,
}

impl InvalidNetwork {
    /// The longest part of the text kept for the message.
    const MAX_TEXT: usize = 64;

    fn new(text: &str) -> Self {
        let mut end = text.len().min(Self::MAX_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            text: text[..end].into(),
        }
    }

    /// The text (its first 64 bytes).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Parses one network: an address in CIDR notation (`203.0.113.0/24`, `2001:db8::/32`) or a
/// bare address (a network of one: `/32`, `/128`), normalised as [`Networks`] keeps them.
///
/// ```
/// use keygate::client_addr::parse_network;
///
/// assert_eq!(parse_network("192.0.2.77/24")?.to_string(), "192.0.2.0/24");
/// assert_eq!(parse_network("2001:db8::1")?.to_string(), "2001:db8::1/128");
/// assert_eq!(parse_network("::ffff:192.0.2.0/120")?.to_string(), "192.0.2.0/24");
/// assert!(parse_network("192.0.2.0/33").is_err());
/// assert!(parse_network("example.com").is_err());
/// # Ok::<(), keygate::client_addr::InvalidNetwork>(())
/// ```
pub fn parse_network(text: &str) -> Result<IpNet, InvalidNetwork> {
    let invalid = || InvalidNetwork::new(text);
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
    let net = match prefix {
        None => IpNet::from(addr),
        Some(prefix) => {
            // Digits only: `u8::from_str` would also take a sign.
            if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid());
            }
            let len: u8 = prefix.parse().map_err(|_| invalid())?;
            IpNet::new(addr, len).map_err(|_| invalid())?
        }
    };
    Ok(normalise(net))
}

/// `net` with the bits after its prefix cleared, and as IPv4 when it is an IPv4-mapped IPv6
/// network.
fn normalise(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4.trunc());
    }
    net.trunc()
}

fn contains(networks: &[IpNet], addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    networks.iter().any(|net| net.contains(&addr))
}

/// The address of the connection's peer, from `extensions`: a [`ClientAddr`] if there is one;
/// else axum's `ConnectInfo<SocketAddr>` (feature `axum`); else tonic's `TcpConnectInfo`
/// (feature `tonic-server`). An IPv4-mapped IPv6 address comes back as IPv4.
pub fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(ClientAddr(addr)) = extensions.get::<ClientAddr>() {
        return Some(addr.to_canonical());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<::axum::extract::ConnectInfo<std::net::SocketAddr>>() {
        return Some(info.0.ip().to_canonical());
    }
    #[cfg(feature = "tonic-server")]
    if let Some(addr) = extensions
        .get::<::tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(addr.ip().to_canonical());
    }
    None
}

/// The client's address: the peer's ([`peer_addr`]), or, when the peer is in
/// `trusted_proxies`, the right-most address of the forwarding headers that is not (see the
/// [module](self) docs). `None` when it is not known: no peer address, or forwarding headers
/// that cannot be believed.
///
/// The work is bounded: at most 8 KiB of headers read, at most 32 entries walked through.
pub fn resolve(head: &RequestHead<'_>, trusted_proxies: &Networks) -> Option<IpAddr> {
    resolve_in(head, &trusted_proxies.0)
}

pub(crate) fn resolve_in(head: &RequestHead<'_>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer_addr(head.extensions)?;
    if !contains(trusted, peer) {
        return Some(peer);
    }
    let forwarded = walk(head.headers, FORWARDED, forwarded_line, trusted);
    let xff = walk(head.headers, X_FORWARDED_FOR, x_forwarded_for_line, trusted);
    match (forwarded, xff) {
        (Walk::Absent, Walk::Absent) => Some(peer),
        (Walk::Client(addr), Walk::Absent) | (Walk::Absent, Walk::Client(addr)) => Some(addr),
        (Walk::Client(a), Walk::Client(b)) if a == b => Some(a),
        _ => None,
    }
}

/// What a forwarding header says of the client.
#[derive(Debug, PartialEq)]
enum Walk {
    /// The request carries no such header.
    Absent,
    /// The client's address.
    Client(IpAddr),
    /// The header cannot be believed.
    Unknown,
}

/// One entry of a forwarding header: an address, or `None` for an entry that names none
/// (`unknown`, obfuscated, empty, malformed).
type Hop = Option<IpAddr>;

/// The last [`MAX_HOPS`] entries of a header, and how many there were in all.
struct Hops {
    ring: [Hop; MAX_HOPS],
    seen: usize,
}

impl Hops {
    fn push(&mut self, hop: Hop) {
        self.ring[self.seen % MAX_HOPS] = hop;
        self.seen += 1;
    }
}

/// Reads every line of the header `name` with `split` (which pushes the line's entries), then
/// walks the entries from the right past the trusted proxies.
fn walk(
    headers: &HeaderMap,
    name: HeaderName,
    split: fn(&str, &mut Hops),
    trusted: &[IpNet],
) -> Walk {
    let mut lines = headers.get_all(&name).iter().peekable();
    if lines.peek().is_none() {
        return Walk::Absent;
    }
    let mut hops = Hops {
        ring: [None; MAX_HOPS],
        seen: 0,
    };
    let mut bytes = 0usize;
    for line in lines {
        bytes += line.len();
        if bytes > MAX_HEADER_BYTES {
            return Walk::Unknown;
        }
        // A line that is not visible ASCII is one entry that names no address.
        match line.to_str() {
            Ok(text) => split(text, &mut hops),
            Err(_) => hops.push(None),
        }
    }
    let kept = hops.seen.min(MAX_HOPS);
    let mut leftmost = None;
    for back in 0..kept {
        let hop = hops.ring[(hops.seen - 1 - back) % MAX_HOPS];
        match hop {
            Some(addr) if contains(trusted, addr) => leftmost = Some(addr),
            Some(addr) => return Walk::Client(addr),
            None => return Walk::Unknown,
        }
    }
    match leftmost {
        // Every entry is a trusted proxy: the first of them is the client.
        Some(addr) if hops.seen <= MAX_HOPS => Walk::Client(addr),
        _ => Walk::Unknown,
    }
}

/// The entries of an `X-Forwarded-For` line: addresses separated by commas, each optionally with
/// a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn x_forwarded_for_line(line: &str, hops: &mut Hops) {
    for entry in line.split(',') {
        hops.push(node(entry.trim_matches(OWS)));
    }
}

/// The address of a node: an IPv4 address or a bracketed IPv6 address, optionally with a port;
/// `X-Forwarded-For` may also hold an IPv6 address without brackets (and then no port). An
/// IPv4-mapped IPv6 address comes back as IPv4.
fn node(text: &str) -> Hop {
    node_addr(text).map(|addr| addr.to_canonical())
}

fn node_addr(text: &str) -> Hop {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr);
    }
    let (addr, port) = text.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port: 1 to 5 digits up to 65535, or an obfuscated port (`_` and letters, digits, `.`, `_`, `-`;
/// RFC 7239 §6.3).
fn is_port(text: &str) -> bool {
    let digits = (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok();
    let obfuscated = text.len() > 1
        && text.starts_with('_')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// The entries of a `Forwarded` line (RFC 7239): elements separated by commas, each of
/// `name=value` pairs separated by semicolons, a value a token or a quoted string. An element's
/// entry is the node of its `for` parameter; an element that is malformed, has no `for` or has
/// two names none. A quoted string left open makes the rest of the line one malformed element.
fn forwarded_line(line: &str, hops: &mut Hops) {
    let mut rest = line;
    loop {
        let (hop, after) = forwarded_element(rest);
        hops.push(hop);
        match after {
            Some(after) => rest = after,
            None => return,
        }
    }
}

/// The first element of `text` and what follows its comma (`None`: the line ends).
fn forwarded_element(text: &str) -> (Hop, Option<&str>) {
    match forwarded_pairs(text) {
        Ok((value, after)) => (value.as_deref().and_then(forwarded_node), after),
        // Malformed: the element names no address; the next one starts after the next comma
        // outside a quoted string.
        Err(Some(at)) => (None, skip_to_comma(at)),
        // A quoted string never closed: the rest of the line is this element.
        Err(None) => (None, None),
    }
}

/// The `for` value of the first element of `text` (`None` if it has none) and what follows the
/// element's comma. `Err(Some(at))` for a malformed element, `at` where it goes wrong (two `for`
/// parameters count as malformed); `Err(None)` for a quoted string that is never closed.
#[allow(clippy::type_complexity)]
fn forwarded_pairs(text: &str) -> Result<(Option<Cow<'_, str>>, Option<&str>), Option<&str>> {
    let mut s = text.trim_start_matches(OWS);
    let mut found: Option<Cow<'_, str>> = None;
    loop {
        // A pair, `name=value`; the grammar allows empty ones (`;;`).
        let name_len = s.bytes().take_while(|&b| is_tchar(b)).count();
        if name_len > 0 {
            let name = &s[..name_len];
            s = s[name_len..].strip_prefix('=').ok_or(Some(s))?;
            let value = match s.strip_prefix('"') {
                Some(quoted) => {
                    let (value, after) = quoted_string(quoted).ok_or(None)?;
                    s = after;
                    value
                }
                None => {
                    let len = s.bytes().take_while(|&b| is_tchar(b)).count();
                    if len == 0 {
                        return Err(Some(s));
                    }
                    let value = Cow::Borrowed(&s[..len]);
                    s = &s[len..];
                    value
                }
            };
            if name.eq_ignore_ascii_case("for") {
                if found.is_some() {
                    return Err(Some(s));
                }
                found = Some(value);
            }
        }
        s = s.trim_start_matches(OWS);
        match s.as_bytes().first() {
            Some(b';') => s = s[1..].trim_start_matches(OWS),
            Some(b',') => return Ok((found, Some(&s[1..]))),
            None => return Ok((found, None)),
            Some(_) => return Err(Some(s)),
        }
    }
}

/// The address of a `Forwarded` node; `unknown` and obfuscated identifiers (`_hidden`) name
/// none.
fn forwarded_node(value: &str) -> Hop {
    if value.eq_ignore_ascii_case("unknown") || value.starts_with('_') {
        return None;
    }
    node(value)
}

/// The text after a comma that is not inside a quoted string; `None` if there is none.
fn skip_to_comma(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => return Some(&text[i + 1..]),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A quoted string's content (its quoted pairs unescaped) and what follows its closing quote,
/// from the text after its opening quote; `None` if it is never closed.
fn quoted_string(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let end = text.find(['"', '\\'])?;
    if text.as_bytes()[end] == b'"' {
        return Some((Cow::Borrowed(&text[..end]), &text[end + 1..]));
    }
    let mut value = String::from(&text[..end]);
    let mut chars = text[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(value), &text[end + i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// A character of a token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(s: &str) -> Networks {
        s.parse().unwrap()
    }

    /// The client of a request from `peer` (none: no connection info) with `headers`, behind
    /// the trusted `proxies`.
    fn client(peer: Option<&str>, headers: &[(&str, &str)], proxies: &str) -> Option<IpAddr> {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        if let Some(peer) = peer {
            req.extensions_mut().insert(ClientAddr(ip(peer)));
        }
        resolve(&RequestHead::of(&req), &nets(proxies))
    }

    #[test]
    fn networks_parse_normalised() {
        let cases = [
            ("203.0.113.7", "203.0.113.7/32"),
            ("203.0.113.7/24", "203.0.113.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_network(text).unwrap().to_string(), want, "{text}");
        }
        for bad in [
            "",
            " 192.0.2.1",
            "192.0.2.1 ",
            "192.0.2",
            "192.0.2.256",
            "192.0.2.01",
            "192.0.2.0/33",
            "192.0.2.0/",
            "192.0.2.0/+8",
            "192.0.2.0/-1",
            "192.0.2.0/0008",
            "192.0.2.0/8/8",
            "2001:db8::/129",
            "[2001:db8::1]",
            "fe80::1%eth0",
            "example.com",
            "192.0.2.1:80",
        ] {
            assert!(parse_network(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(100);
        let e = parse_network(&long).unwrap_err();
        assert_eq!(e.text().len(), 64);
        let e = parse_network(&"é".repeat(40)).unwrap_err();
        assert!(e.text().len() <= 64 && e.text().chars().all(|c| c == 'é'));
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_print_back() {
        let list = nets(" 2001:db8::/32 ,203.0.113.9/24, 198.51.100.1, 203.0.113.0/24");
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.to_string(),
            "198.51.100.1/32, 203.0.113.0/24, 2001:db8::/32"
        );
        assert_eq!(list.to_string().parse::<Networks>().unwrap(), list);
        assert_eq!(
            format!("{list:?}"),
            "[198.51.100.1/32, 203.0.113.0/24, 2001:db8::/32]"
        );
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["198.51.100.1/32","203.0.113.0/24","2001:db8::/32"]"#
        );
        assert_eq!(nets("198.51.100.1, 2001:db8::/32, 203.0.113.0/24"), list);
        assert!(nets("").is_empty());
        assert!(nets("  ").is_empty());
        assert!("10.0.0.0/8,,10.1.0.0/16".parse::<Networks>().is_err());
        assert!("10.0.0.0/8,".parse::<Networks>().is_err());
        let collected: Networks = list.iter().collect();
        assert_eq!(collected, list);
        assert_eq!(list.clone().into_iter().count(), 3);
    }

    #[test]
    fn membership_maps_ipv4_in_ipv6() {
        let list = nets("203.0.113.0/24, 2001:db8::/32");
        assert!(list.contains(ip("203.0.113.0")));
        assert!(list.contains(ip("203.0.113.255")));
        assert!(!list.contains(ip("203.0.114.0")));
        assert!(list.contains(ip("::ffff:203.0.113.5")));
        assert!(!list.contains(ip("::ffff:203.0.114.5")));
        assert!(list.contains(ip("2001:db8:ffff::1")));
        assert!(!list.contains(ip("2001:db9::1")));
        assert!(!Networks::new().contains(ip("203.0.113.5")));
        // IPv4 addresses are matched as IPv4, however written.
        assert!(!nets("::/0").contains(ip("203.0.113.5")));
        assert!(!nets("::/0").contains(ip("::ffff:203.0.113.5")));
        assert!(nets("0.0.0.0/0").contains(ip("::ffff:203.0.113.5")));
    }

    const PROXIES: &str = "10.0.0.0/8, 2001:db8:ffff::/48";

    #[test]
    fn the_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        assert_eq!(client(None, &[], PROXIES), None);
        assert_eq!(
            client(None, &[("x-forwarded-for", "192.0.2.1")], PROXIES),
            None
        );
        assert_eq!(
            client(Some("192.0.2.1"), &[], PROXIES),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            client(Some("::ffff:192.0.2.1"), &[], PROXIES),
            Some(ip("192.0.2.1"))
        );
        // An untrusted peer's headers change nothing.
        for header in ["x-forwarded-for", "forwarded"] {
            let value = if header == "forwarded" {
                "for=198.51.100.1"
            } else {
                "198.51.100.1"
            };
            assert_eq!(
                client(Some("192.0.2.1"), &[(header, value)], PROXIES),
                Some(ip("192.0.2.1"))
            );
            assert_eq!(
                client(Some("192.0.2.1"), &[(header, value)], ""),
                Some(ip("192.0.2.1"))
            );
        }
        // A trusted proxy without forwarding headers is the client.
        assert_eq!(client(Some("10.0.0.2"), &[], PROXIES), Some(ip("10.0.0.2")));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let xff = |value: &str| client(Some("10.0.0.2"), &[("x-forwarded-for", value)], PROXIES);
        assert_eq!(xff("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(xff("203.0.113.9, 192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(
            xff("203.0.113.9, 192.0.2.1, 10.1.1.1,10.2.2.2"),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(xff("10.9.9.9, 10.1.1.1"), Some(ip("10.9.9.9")));
        assert_eq!(xff("192.0.2.1:4711"), Some(ip("192.0.2.1")));
        assert_eq!(xff("[2001:db8::5]:4711"), Some(ip("2001:db8::5")));
        assert_eq!(xff("[2001:db8::5]"), Some(ip("2001:db8::5")));
        assert_eq!(xff("2001:db8::5"), Some(ip("2001:db8::5")));
        assert_eq!(xff("::ffff:192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(xff("\t192.0.2.1 "), Some(ip("192.0.2.1")));
        // Entries left of the client's are never looked at.
        assert_eq!(xff("garbage, unknown, , 192.0.2.1"), Some(ip("192.0.2.1")));
        // What cannot be read, met before the client's address, leaves it unknown.
        for bad in [
            "",
            "unknown",
            "192.0.2.1, unknown",
            "192.0.2.1, ",
            "192.0.2.1,, 10.1.1.1",
            "192.0.2.1, nonsense, 10.1.1.1",
            "192.0.2.1:99999",
            "192.0.2.1:",
            "[2001:db8::5]:",
            "[2001:db8::5]x",
            "[192.0.2.1]",
            "fe80::1%eth0",
            "192.0.2.1 10.1.1.1",
        ] {
            assert_eq!(xff(bad), None, "{bad:?}");
        }
        // Every line counts, in order.
        assert_eq!(
            client(
                Some("10.0.0.2"),
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "192.0.2.1, 10.1.1.1")
                ],
                PROXIES
            ),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            client(
                Some("10.0.0.2"),
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "10.1.1.1")
                ],
                PROXIES
            ),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn forwarded_is_read_by_rfc_7239() {
        let fwd = |value: &str| client(Some("10.0.0.2"), &[("forwarded", value)], PROXIES);
        assert_eq!(fwd("for=192.0.2.60"), Some(ip("192.0.2.60")));
        assert_eq!(
            fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            fwd(r#"for="[2001:db8:cafe::17]:4711""#),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            fwd(r#"For="[2001:db8:cafe::17]""#),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(fwd(r#"for="192.0.2.43:47011""#), Some(ip("192.0.2.43")));
        assert_eq!(fwd(r#"for="192.0.2.43:_p-1""#), Some(ip("192.0.2.43")));
        assert_eq!(fwd(r#"for="\192.0.2.43""#), Some(ip("192.0.2.43")));
        assert_eq!(
            fwd("for=192.0.2.43, for=198.51.100.17;by=10.0.0.5, for=10.1.1.1"),
            Some(ip("198.51.100.17"))
        );
        assert_eq!(
            fwd(r#"for=192.0.2.43 , proto=https;for="[2001:db8:ffff::9]""#),
            Some(ip("192.0.2.43"))
        );
        // Entries left of the client's are never looked at.
        assert_eq!(
            fwd(r#"for=unknown, for=_x, nonsense, for="[::1, for=192.0.2.1"#),
            None,
            "an open quote swallows the rest of the line"
        );
        assert_eq!(
            fwd(r#"for=unknown, for=_x, nonsense, for=", for=", for=192.0.2.1"#),
            Some(ip("192.0.2.1"))
        );
        for bad in [
            "",
            "for=unknown",
            "for=UNKNOWN",
            "for=_hidden",
            r#"for="_hidden""#,
            r#"for="[2001:db8::1]:_p, for=192.0.2.1""#,
            "proto=https",
            "for=192.0.2.1, proto=https",
            "for=192.0.2.1;for=192.0.2.2",
            "for=192.0.2.1;For=192.0.2.1",
            "for=192.0.2.1,",
            "for=",
            "for",
            "=192.0.2.1",
            "for=192.0.2.1 junk",
            r#"for="192.0.2.1"junk"#,
            r#"for="192.0.2.1"#,
            r#"for="[2001:db8::1]:99999""#,
            "for=[2001:db8::1]",
            r#"for="[2001:db8::1""#,
            r#"for=192.0.2.1;by="10.0.0.1"#,
            "for=192.0.2.1:80",
        ] {
            assert_eq!(fwd(bad), None, "{bad:?}");
        }
        // A client's open quote cannot take the proxy's element.
        for client_sent in [r#"for=""#, r#"for="x\"#, r#"for=1.2.3.4;by=""#] {
            for appended in [r#"for="[2001:db8::7]:1""#, "for=198.51.100.3"] {
                let value = format!("{client_sent}, {appended}");
                assert_eq!(fwd(&value), None, "{value}");
            }
        }
        // Each line on its own: the client's open quote stays on its line.
        assert_eq!(
            client(
                Some("10.0.0.2"),
                &[
                    ("forwarded", r#"for="[::1"#),
                    ("forwarded", "for=198.51.100.3")
                ],
                PROXIES
            ),
            Some(ip("198.51.100.3"))
        );
    }

    #[test]
    fn both_headers_must_agree() {
        let both = |forwarded: &str, xff: &str| {
            client(
                Some("10.0.0.2"),
                &[("forwarded", forwarded), ("x-forwarded-for", xff)],
                PROXIES,
            )
        };
        assert_eq!(
            both("for=192.0.2.1", "203.0.113.1, 192.0.2.1"),
            Some(ip("192.0.2.1"))
        );
        // A proxy that writes one header and passes the other on as the client sent it.
        assert_eq!(both("for=203.0.113.1", "192.0.2.1"), None);
        assert_eq!(both("for=192.0.2.1", "203.0.113.1"), None);
        assert_eq!(both("for=unknown", "192.0.2.1"), None);
    }

    #[test]
    fn work_is_bounded() {
        let xff = |value: &str| client(Some("10.0.0.2"), &[("x-forwarded-for", value)], PROXIES);
        let hops = |n: usize| {
            let mut v: Vec<String> = (0..n)
                .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
                .collect();
            v.insert(0, "192.0.2.1".into());
            v.join(", ")
        };
        // 31 trusted proxies and the client: 32 entries.
        assert_eq!(xff(&hops(31)), Some(ip("192.0.2.1")));
        assert_eq!(xff(&hops(32)), None);
        assert_eq!(xff(&hops(500)), None);
        // A client's long history left of its address does not matter while it fits.
        let history = vec!["198.51.100.1"; 100].join(", ");
        assert_eq!(xff(&format!("{history}, 192.0.2.1")), Some(ip("192.0.2.1")));
        // Every entry a trusted proxy: the left-most is the client, within the bound.
        let trusted = |n: usize| (1..=n).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>();
        assert_eq!(xff(&trusted(32).join(", ")), Some(ip("10.0.0.1")));
        assert_eq!(xff(&trusted(33).join(", ")), None);
        // More than 8 KiB of header.
        let padding = " ".repeat(8 * 1024);
        assert_eq!(xff(&format!("{padding}192.0.2.1")), None);
        assert_eq!(
            client(
                Some("10.0.0.2"),
                &[
                    ("x-forwarded-for", &" ".repeat(5000)),
                    ("x-forwarded-for", &format!("{}192.0.2.1", " ".repeat(5000)))
                ],
                PROXIES
            ),
            None
        );
    }

    #[test]
    fn connection_info_is_read_and_client_addr_wins() {
        let mut req = http::Request::new(());
        assert_eq!(peer_addr(req.extensions()), None);
        #[cfg(feature = "axum")]
        {
            let connect = ::axum::extract::ConnectInfo(std::net::SocketAddr::from((
                ip("::ffff:192.0.2.8"),
                4711,
            )));
            req.extensions_mut().insert(connect);
            assert_eq!(peer_addr(req.extensions()), Some(ip("192.0.2.8")));
        }
        #[cfg(feature = "tonic-server")]
        {
            let mut req = http::Request::new(());
            req.extensions_mut()
                .insert(::tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(std::net::SocketAddr::from((ip("2001:db8::8"), 1))),
                });
            assert_eq!(peer_addr(req.extensions()), Some(ip("2001:db8::8")));
        }
        req.extensions_mut().insert(ClientAddr(ip("198.51.100.9")));
        assert_eq!(peer_addr(req.extensions()), Some(ip("198.51.100.9")));
    }
}
