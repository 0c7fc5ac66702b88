package app

import "go.uber.org/zap"

// nopZap silences the etcd client's own zap logging: its connection chatter
// would interleave with our slog JSON, and the readiness check already
// reports an unreachable etcd.
func nopZap() *zap.Logger { return zap.NewNop() }
