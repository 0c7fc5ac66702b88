package tenants

import "time"

// Hooks for the external tests (package tenants_test), which drive
// WebhookSecrets through the REST API (a package that imports this one).

// Synced reports whether w's watch is established.
func (w *WebhookSecrets) Synced() bool { return w.synced() }

// EtcdReads counts the lookups w answered from etcd rather than its cache.
func (w *WebhookSecrets) EtcdReads() int64 { return w.reads.Load() }

// SetClock makes w read the time from now.
func (w *WebhookSecrets) SetClock(now func() time.Time) { w.now = now }
