package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// snapshotChunk bounds the records read and sent per snapshot response, so
// a large registry neither holds one huge etcd range nor exceeds gRPC's
// message size.
const snapshotChunk = 500

// errCompacted means the revision a watch asked for is gone.
var errCompacted = errors.New("watch revision compacted")

// Watch streams changes to services, profiles and instances after
// start_revision. From revision 0, or when the revision asked for has been
// compacted, it first sends a snapshot of the current state (resync) and
// follows from the snapshot's revision, so a client that applies every
// response in order holds exactly the store's state.
func (s *Server) Watch(req *registryv1.WatchRequest, stream grpc.ServerStreamingServer[registryv1.WatchResponse]) error {
	ctx := stream.Context()
	if req.GetStartRevision() < 0 {
		return problem.InvalidArgument("start_revision", "start_revision must not be negative")
	}
	kinds := map[registryv1.ResourceKind]bool{}
	for i, k := range req.GetKinds() {
		if _, ok := registryv1.ResourceKind_name[int32(k)]; !ok || k == registryv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED {
			return problem.InvalidArgument(fmt.Sprintf("kinds[%d]", i), "kinds[%d] is not a resource kind", i)
		}
		kinds[k] = true
	}
	want := func(k registryv1.ResourceKind) bool { return len(kinds) == 0 || kinds[k] }

	rev := req.GetStartRevision()
	for {
		if rev == 0 {
			r, err := s.sendSnapshot(ctx, stream, want)
			if err != nil {
				return err
			}
			rev = r
		}
		var err error
		rev, err = s.follow(ctx, stream, want, rev)
		if errors.Is(err, errCompacted) {
			rev = 0
			continue
		}
		return err
	}
}

// sendSnapshot sends every record at one revision in chunks, the first
// marked resync and the last synced, and returns that revision.
func (s *Server) sendSnapshot(ctx context.Context, stream grpc.ServerStreamingServer[registryv1.WatchResponse], want func(registryv1.ResourceKind) bool) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(KeyPrefix)
	start, rev, first := KeyPrefix, int64(0), true
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(snapshotChunk),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev != 0 {
			// Later chunks read the first chunk's revision: one consistent cut.
			opts = append(opts, clientv3.WithRev(rev))
		}
		sctx, cancel := storeCtx(ctx)
		resp, err := s.cli.Get(sctx, start, opts...)
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			// Compacted under a long snapshot: start over at a newer cut. The
			// client has only seen a resync so far, so a new resync is right.
			start, rev = KeyPrefix, 0
			continue
		}
		if err != nil {
			return 0, registryUnavailable(ctx, "read registry snapshot", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		out := &registryv1.WatchResponse{Revision: rev, Resync: first, Synced: !resp.More}
		for _, kv := range resp.Kvs {
			if c, ok := change(ctx, clientv3.EventTypePut, kv, nil); ok && want(c.GetKind()) {
				out.Changes = append(out.Changes, c)
			}
		}
		if err := stream.Send(out); err != nil {
			return 0, err
		}
		first = false
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// follow streams changes after rev until the client goes away (nil), etcd
// compacted rev (errCompacted) or the etcd watch fails (Unavailable: the
// client resumes from the last revision it got). It returns the revision
// reached.
func (s *Server) follow(ctx context.Context, stream grpc.ServerStreamingServer[registryv1.WatchResponse], want func(registryv1.ResourceKind) bool, rev int64) (int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Progress notifications advance an idle client's revision, so it
	// resumes without a snapshot after a quiet hour.
	wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), KeyPrefix, clientv3.WithPrefix(),
		clientv3.WithPrevKV(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return rev, errCompacted
		}
		if err := resp.Err(); err != nil {
			return rev, registryUnavailable(ctx, "registry watch interrupted", err)
		}
		out := &registryv1.WatchResponse{Synced: true}
		switch {
		case resp.IsProgressNotify():
			out.Revision = resp.Header.Revision
		case len(resp.Events) == 0:
			continue
		default:
			out.Revision = resp.Events[len(resp.Events)-1].Kv.ModRevision
		}
		for _, ev := range resp.Events {
			if c, ok := change(ctx, ev.Type, ev.Kv, ev.PrevKv); ok && want(c.GetKind()) {
				out.Changes = append(out.Changes, c)
			}
		}
		if out.Revision <= rev {
			continue
		}
		if err := stream.Send(out); err != nil {
			return rev, err
		}
		rev = out.Revision
	}
	if ctx.Err() != nil {
		return rev, nil
	}
	return rev, problem.Unavailable("registry watch closed", nil)
}

func registryUnavailable(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return problem.Unavailable(what, err)
}

// change turns one etcd record into a Change: the kind and name come from
// the key, the resource from the value (for a delete, the previous value).
func change(ctx context.Context, typ mvccpb.Event_EventType, kv, prev *mvccpb.KeyValue) (*registryv1.Change, bool) {
	key := string(kv.Key)
	c := &registryv1.Change{Type: registryv1.Change_TYPE_PUT, Revision: kv.ModRevision}
	var (
		m      proto.Message
		prefix string
	)
	switch {
	case strings.HasPrefix(key, ServicesPrefix):
		svc := new(registryv1.Service)
		c.Kind, prefix, m = registryv1.ResourceKind_RESOURCE_KIND_SERVICE, ServicesPrefix, svc
		c.Resource = &registryv1.Change_Service{Service: svc}
	case strings.HasPrefix(key, ProfilesPrefix):
		p := new(registryv1.JobProfile)
		c.Kind, prefix, m = registryv1.ResourceKind_RESOURCE_KIND_JOB_PROFILE, ProfilesPrefix, p
		c.Resource = &registryv1.Change_Profile{Profile: p}
	case strings.HasPrefix(key, InstancesPrefix):
		in := new(registryv1.ServiceInstance)
		c.Kind, prefix, m = registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, InstancesPrefix, in
		c.Resource = &registryv1.Change_Instance{Instance: in}
	default:
		return nil, false
	}
	c.Name = strings.TrimPrefix(key, prefix)
	src := kv
	if typ == clientv3.EventTypeDelete {
		c.Type, src = registryv1.Change_TYPE_DELETE, prev
	}
	if src == nil {
		// A delete whose previous value is compacted: the name is enough.
		c.Resource = nil
		return c, true
	}
	if err := decode(src.Value, m); err != nil {
		warnCorrupt(ctx, src.Key, err)
		if c.Type == registryv1.Change_TYPE_PUT {
			// Followers keep what they had rather than a broken record.
			return nil, false
		}
		c.Resource = nil
	}
	return c, true
}
