package locator

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// Addresses that reach internal or special-purpose networks only through a
// range netip does not classify, or through a translator, are refused like
// the plain internal ones; public addresses in the same forms are not.
func TestInternalAddrSpecialAndTranslated(t *testing.T) {
	tests := map[string]string{ // address -> what the refusal names; "" allowed
		"198.18.0.1":                           "a benchmarking address",
		"198.19.255.254":                       "a benchmarking address",
		"240.0.0.1":                            "a reserved address",
		"255.255.255.255":                      "a reserved address",
		"192.0.0.8":                            "an IETF protocol assignment",
		"192.0.2.10":                           "a documentation address",
		"192.88.99.1":                          "a 6to4 relay address",
		"0.0.0.0":                              "an unspecified address",
		"64:ff9b::7f00:1":                      "the translated form of 127.0.0.1, a loopback address",
		"64:ff9b::a9fe:a9fe":                   "the translated form of 169.254.169.254, a link-local address",
		"64:ff9b::a01:203":                     "the translated form of 10.1.2.3, a private address",
		"64:ff9b::":                            "the translated form of 0.0.0.0, an unspecified address",
		"64:ff9b:1::1":                         "a local-use NAT64 address",
		"64:ff9b::ffff:7f00:1":                 "a NAT64 address outside the well-known",
		"::ffff:0:7f00:1":                      "the translated form of 127.0.0.1, a loopback address",
		"2002:7f00:1::1":                       "the translated form of 127.0.0.1, a loopback address",
		"2002:a9fe:a9fe::":                     "the translated form of 169.254.169.254, a link-local address",
		"::127.0.0.1":                          "the translated form of 127.0.0.1, a loopback address",
		"::ffff:10.0.0.1":                      "a private address",
		"2001:0:4136:e378:8000:63bf:3fff:fdd2": "a Teredo tunnel address",
		"fec0::1":                              "a site-local address",
		"2001:db8::1":                          "a documentation address",
		"100::1":                               "a discard-only address",
		// A zone only picks an interface: the address is what counts.
		"64:ff9b::7f00:1%lo":    "the translated form of 127.0.0.1, a loopback address",
		"::ffff:0:a9fe:a9fe%lo": "the translated form of 169.254.169.254",
		"fd00::1%eth0":          "a private address",
		"fe80::1%eth0":          "a link-local address",
		"fec0::1%eth0":          "a site-local address",
		"2001:db8::1%1":         "a documentation address",
		// Public, directly or through a translator.
		"64:ff9b::808:808":   "",
		"::ffff:0:808:808":   "",
		"2002:808:808::1":    "",
		"198.20.0.1":         "",
		"223.255.255.1":      "",
		"2001:4860::8888":    "",
		"2001:4860::8888%lo": "",
		// Anycast services the special-purpose registry marks global.
		"192.0.0.9":  "",
		"192.0.0.10": "",
	}
	for addr, want := range tests {
		got := InternalAddr(netip.MustParseAddr(addr))
		if want == "" && got != "" {
			t.Errorf("%s refused as %q, want allowed", addr, got)
		}
		if want != "" && !strings.Contains(got, want) {
			t.Errorf("%s: reason %q, want it to name %q", addr, got, want)
		}
	}
}

// A literal NAT64 form of the metadata address in a locator is refused
// before any I/O, with an error naming where it leads, zoned or not.
func TestCheckHostRefusesTranslatedInternal(t *testing.T) {
	r := &Resolver{}
	for _, host := range []string{"64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe%lo"} {
		err := r.checkHost(host)
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "169.254.169.254") {
			t.Errorf("checkHost(%s) = %v, want ErrForbidden naming 169.254.169.254", host, err)
		}
	}
}

// The dial-time check, which also guards host names and redirects, refuses
// a translated internal address: the connection is never attempted.
func TestTransportRefusesTranslatedInternal(t *testing.T) {
	c := &http.Client{Transport: NewTransport(false)}
	for _, u := range []string{"http://[64:ff9b::7f00:1]:9/x", "http://[64:ff9b::7f00:1%25lo]:9/x", "http://[::ffff:0:7f00:1]:9/x"} {
		resp, err := c.Get(u)
		if err == nil {
			_ = resp.Body.Close()
		}
		if !errors.Is(err, ErrForbidden) {
			t.Errorf("GET %s: %v, want ErrForbidden", u, err)
		}
	}
}

// A host name refused at dial time does not tell the tenant the internal
// address it resolved to.
func TestTransportRefusalHidesResolvedAddress(t *testing.T) {
	c := &http.Client{Transport: NewTransport(false)}
	resp, err := c.Get("http://localhost:9/x")
	if err == nil {
		_ = resp.Body.Close()
	}
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("GET http://localhost:9/x: %v, want ErrForbidden", err)
	}
	for _, leak := range []string{"127.0.0.1", "::1", "loopback"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("refusal %q names %q", err, leak)
		}
	}
}
