package locator

import (
	"fmt"
	"net/netip"
)

// special lists the IPv4 and IPv6 ranges, beyond those netip classifies
// (loopback, private, link-local, multicast, unspecified), that a tenant's
// URL must not reach: internal in many networks, or not meant to be
// dialled at all (IANA special-purpose registries). Each names itself as a
// noun phrase, for "<address> is <why>".
var special = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "an address of \"this network\" (0.0.0.0/8)"},
	// Carrier-grade NAT, which clouds use for internal endpoints.
	{netip.MustParsePrefix("100.64.0.0/10"), "a shared address (100.64.0.0/10)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignment (192.0.0.0/24)"},
	{netip.MustParsePrefix("192.0.2.0/24"), "a documentation address (192.0.2.0/24)"},
	{netip.MustParsePrefix("192.88.99.0/24"), "a 6to4 relay address (192.88.99.0/24)"},
	// Benchmarking, used by some providers for internal services.
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "a documentation address (198.51.100.0/24)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "a documentation address (203.0.113.0/24)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address (240.0.0.0/4)"},
	{netip.MustParsePrefix("100::/64"), "a discard-only address (100::/64)"},
	{netip.MustParsePrefix("2001:db8::/32"), "a documentation address (2001:db8::/32)"},
	// Teredo hides an IPv4 address (XOR-ed) that a relay dials on our
	// behalf; nothing legitimate is served there.
	{netip.MustParsePrefix("2001::/32"), "a Teredo tunnel address (2001::/32)"},
	// Local-use NAT64 (RFC 8215): a translator of the site's own choosing.
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a local-use NAT64 address (64:ff9b:1::/48)"},
	// The rest of 64:ff9b::/32 beyond the well-known /96 (which embeddedV4
	// reads) is unassigned; a translator may still map it.
	{netip.MustParsePrefix("64:ff9b::/32"), "a NAT64 address outside the well-known 64:ff9b::/96 (64:ff9b::/32)"},
	// Deprecated site-local, still routed inside some networks.
	{netip.MustParsePrefix("fec0::/10"), "a site-local address (fec0::/10)"},
}

// Globally reachable anycast services inside 192.0.0.0/24 (PCP, RFC 7723;
// TURN, RFC 8155), which the registry exempts from that range.
var anycast = []netip.Addr{netip.MustParseAddr("192.0.0.9"), netip.MustParseAddr("192.0.0.10")}

// Prefixes of IPv6 addresses that carry an IPv4 address the network turns
// into a connection to it: a NAT64 translator (the well-known prefix), a
// stateless (SIIT) translator, or a 6to4 relay. Dialling 64:ff9b::7f00:1
// reaches 127.0.0.1 where NAT64 runs.
var (
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	siit    = netip.MustParsePrefix("::ffff:0:0:0/96") // IPv4-translated, ::ffff:0:a.b.c.d
	sixToV4 = netip.MustParsePrefix("2002::/16")
	// IPv4-compatible addresses (deprecated): ::a.b.c.d.
	v4Compat = netip.MustParsePrefix("::/96")
)

// embeddedV4 returns the IPv4 address an IPv6 address of a translating or
// tunnelling prefix leads to.
func embeddedV4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip), siit.Contains(ip), v4Compat.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback():
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToV4.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// InternalAddr explains why ip may not be dialled on behalf of a tenant (a
// locator or a webhook), as a noun phrase ("a private address"), or returns
// "" if it may: it is internal to the deployment's network, special-purpose,
// or leads to such an address through a translator (NAT64, SIIT, 6to4, an
// IPv4-mapped or -compatible form).
func InternalAddr(ip netip.Addr) string {
	// A zone (fe80::1%eth0, or any IPv6 literal with %25 in a URL) only
	// picks the interface; netip's prefix matching never matches a zoned
	// address, so it must go before any comparison.
	ip = ip.WithZone("").Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	if v4, ok := embeddedV4(ip); ok {
		if why := InternalAddr(v4); why != "" {
			return fmt.Sprintf("the translated form of %s, %s", v4, why)
		}
		return ""
	}
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsUnspecified():
		return "an unspecified address"
	case ip.IsPrivate():
		return "a private address"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "a link-local address"
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "a multicast address"
	}
	for _, a := range anycast {
		if ip == a {
			return ""
		}
	}
	for _, s := range special {
		if s.prefix.Contains(ip) {
			return s.why
		}
	}
	return ""
}
