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
		"198.18.0.1":                           "benchmarking",
		"198.19.255.254":                       "benchmarking",
		"240.0.0.1":                            "reserved",
		"255.255.255.255":                      "reserved",
		"192.0.0.8":                            "IETF protocol assignment",
		"192.0.2.10":                           "documentation",
		"192.88.99.1":                          "6to4 relay",
		"64:ff9b::7f00:1":                      "translated form of 127.0.0.1, a loopback",
		"64:ff9b::a9fe:a9fe":                   "translated form of 169.254.169.254, a link-local",
		"64:ff9b::a01:203":                     "translated form of 10.1.2.3, a private",
		"64:ff9b:1::1":                         "local-use NAT64",
		"2002:7f00:1::1":                       "translated form of 127.0.0.1, a loopback",
		"2002:a9fe:a9fe::":                     "translated form of 169.254.169.254, a link-local",
		"::127.0.0.1":                          "translated form of 127.0.0.1, a loopback",
		"::ffff:10.0.0.1":                      "private",
		"2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
		"fec0::1":                              "site-local",
		"2001:db8::1":                          "documentation",
		"100::1":                               "discard-only",
		// Public, directly or through a translator.
		"64:ff9b::808:808": "",
		"2002:808:808::1":  "",
		"198.20.0.1":       "",
		"223.255.255.1":    "",
		"2001:4860::8888":  "",
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
// before any I/O, with an error naming where it leads.
func TestCheckHostRefusesTranslatedInternal(t *testing.T) {
	r := &Resolver{}
	err := r.checkHost("64:ff9b::a9fe:a9fe")
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "169.254.169.254") {
		t.Fatalf("checkHost = %v, want ErrForbidden naming 169.254.169.254", err)
	}
}

// The dial-time check, which also guards host names and redirects, refuses
// a translated internal address: the connection is never attempted.
func TestTransportRefusesTranslatedInternal(t *testing.T) {
	c := &http.Client{Transport: NewTransport(false)}
	resp, err := c.Get("http://[64:ff9b::7f00:1]:9/x")
	if err == nil {
		_ = resp.Body.Close()
	}
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("GET through NAT64 form of 127.0.0.1: %v, want ErrForbidden", err)
	}
}
