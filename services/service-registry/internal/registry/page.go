package registry

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/medius-platform/medius/pkg/problem"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// Page sizes (AIP-158): 0 means the default, larger requests are capped.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// pageSize applies the defaults and limits to a requested page size.
func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, problem.InvalidArgument("page_size", "page_size must not be negative")
	case n == 0:
		return DefaultPageSize, nil
	case n > MaxPageSize:
		return MaxPageSize, nil
	}
	return int(n), nil
}

// A page token is the base64 of the last key returned: opaque to clients,
// stable across registry restarts and replicas, and it cannot be used with a
// different collection because it must carry that collection's prefix.
func encodeToken(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func decodeToken(prefix, token string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || !strings.HasPrefix(string(b), prefix) || len(b) == len(prefix) {
		return "", problem.InvalidArgument("page_token", "page_token is not valid for this list")
	}
	return string(b), nil
}

// listPage returns up to size records under prefix after the token's key
// that keep accepts, in key order, and the token of the next page ("" on the
// last page). Records are read from etcd in batches until the page is full,
// so a selective filter does not produce short pages.
func listPage[T proto.Message](ctx context.Context, cli *clientv3.Client, prefix, token string, size int32, newT func() T, keep func(T) bool) ([]T, string, error) {
	n, err := pageSize(size)
	if err != nil {
		return nil, "", err
	}
	start := prefix
	if token != "" {
		last, err := decodeToken(prefix, token)
		if err != nil {
			return nil, "", err
		}
		// The smallest key after last.
		start = last + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	batch := int64(max(n+1, 50))

	var (
		out  []T
		keys []string
	)
	// Collect one item more than the page holds: it tells whether a next
	// page exists without handing out a token to an empty page.
	for len(out) <= n {
		sctx, cancel := storeCtx(ctx)
		resp, err := cli.Get(sctx, start, clientv3.WithRange(end), clientv3.WithLimit(batch),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		cancel()
		if err != nil {
			return nil, "", fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			m := newT()
			if err := decode(kv.Value, m); err != nil {
				warnCorrupt(ctx, kv.Key, err)
				continue
			}
			if keep != nil && !keep(m) {
				continue
			}
			out = append(out, m)
			keys = append(keys, string(kv.Key))
			if len(out) > n {
				break
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(out) > n {
		return out[:n], encodeToken(keys[n-1]), nil
	}
	return out, "", nil
}
