package locator

import (
	"fmt"
	"net/netip"
)

// special lists the IPv4 and IPv6 ranges, beyond those netip classifies
// (loopback, private, link-local, multicast, unspecified), that a tenant's
// URL must not reach: internal in many networks, or not meant to be
// dialled at all (IANA special-purpose registries).
var special = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
	// Carrier-grade NAT, which clouds use for internal endpoints.
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (100.64.0.0/10)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment (192.0.0.0/24)"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation (192.0.2.0/24)"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay (192.88.99.0/24)"},
	// Benchmarking, used by some providers for internal services.
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation (198.51.100.0/24)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation (203.0.113.0/24)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4)"},
	{netip.MustParsePrefix("100::/64"), "discard-only (100::/64)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation (2001:db8::/32)"},
	// Teredo hides an IPv4 address (XOR-ed) that a relay dials on our
	// behalf; nothing legitimate is served there.
	{netip.MustParsePrefix("2001::/32"), "Teredo tunnel (2001::/32)"},
	// Local-use NAT64 (RFC 8215): a translator of the site's own choosing.
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"},
	// Deprecated site-local, still routed inside some networks.
	{netip.MustParsePrefix("fec0::/10"), "site-local (fec0::/10)"},
}

// Prefixes of IPv6 addresses that carry an IPv4 address the network turns
// into a connection to it: a NAT64 translator (the well-known prefix) or a
// 6to4 relay. Dialling 64:ff9b::7f00:1 reaches 127.0.0.1 where NAT64 runs.
var (
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
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
	case nat64.Contains(ip), v4Compat.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback():
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToV4.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// InternalAddr explains why ip may not be dialled on behalf of a tenant (a
// locator or a webhook), or returns "" if it may: it is internal to the
// deployment's network, special-purpose, or leads to such an address
// through a translator (NAT64, 6to4, an IPv4-mapped or -compatible form).
func InternalAddr(ip netip.Addr) string {
	ip = ip.Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	if v4, ok := embeddedV4(ip); ok {
		if why := InternalAddr(v4); why != "" {
			return fmt.Sprintf("translated form of %s, a %s", v4, why)
		}
		return ""
	}
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "link-local"
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast"
	}
	for _, s := range special {
		if s.prefix.Contains(ip) {
			return s.why
		}
	}
	return ""
}

// addrPolicy is InternalAddr, as the resolver's dial check calls it.
func addrPolicy(ip netip.Addr) string { return InternalAddr(ip) }
