package profiles

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

// ParamOutputLocation is the output locator every file-producing profile
// takes: a file:// directory or s3:// prefix receiving the profile's files
// under fixed names, or, for a profile with one output file, an http(s) URL
// it is PUT to (see docs/worker-sdk.md).
const ParamOutputLocation = "outputLocation"

// FFmpeg is the ffmpeg binary run.
var FFmpeg = "ffmpeg"

// media is an opened input: how the tools open it and its probed properties.
type media struct {
	input    mediaInput
	duration float64
	width    int
	height   int
	hasVideo bool
	hasAudio bool
	// isImage: a still image (an image2 or *_pipe format), no duration.
	isImage bool
}

// openInput resolves the inputFile locator and probes it. An input ffprobe
// cannot read is the client's error (invalid-input), not a tool failure.
// cleanup is never nil.
func openInput(ctx context.Context, res *locator.Resolver, item *workersdk.WorkItem) (*media, func(), error) {
	noop := func() {}
	url, err := workersdk.InputLocator(item, ParamInputFile)
	if err != nil {
		return nil, noop, err
	}
	path, cleanup, err := res.Open(ctx, url)
	if err != nil {
		return nil, cleanup, workersdk.InputError(ParamInputFile, url, err)
	}
	meta, dur, in, err := probe(ctx, path)
	if err != nil {
		var pe *problem.Error
		if errors.As(err, &pe) && pe.Type == workersdk.TypeToolFailed {
			return nil, cleanup, badMedia("is not readable media: " + pe.Detail)
		}
		return nil, cleanup, err
	}
	format := meta.GetFields()["format"].GetStructValue().GetFields()["formatName"].GetStringValue()
	m := &media{input: in, duration: dur, isImage: strings.HasSuffix(format, "_pipe") || format == "image2"}
	for _, s := range meta.GetFields()["streams"].GetListValue().GetValues() {
		f := s.GetStructValue().GetFields()
		switch f["codecType"].GetStringValue() {
		case "video":
			if !m.hasVideo {
				m.hasVideo = true
				m.width, m.height = int(f["width"].GetNumberValue()), int(f["height"].GetNumberValue())
			}
		case "audio":
			m.hasAudio = true
		}
	}
	return m, cleanup, nil
}

func hasDuration(m *media) bool { return m.duration > 0 && !math.IsInf(m.duration, 0) }

// openMedia opens an input that plays for some time and has the stream
// kinds needed; otherwise the client's error (invalid-input).
func openMedia(ctx context.Context, res *locator.Resolver, item *workersdk.WorkItem, needVideo, needAudio bool) (*media, func(), error) {
	m, cleanup, err := openInput(ctx, res, item)
	switch {
	case err != nil:
		return nil, cleanup, err
	case !hasDuration(m):
		return nil, cleanup, badMedia("has no duration")
	case needVideo && !m.hasVideo:
		return nil, cleanup, badMedia("has no video stream")
	case needAudio && !m.hasAudio:
		return nil, cleanup, badMedia("has no audio stream")
	}
	return m, cleanup, nil
}

// openPicture opens a still image or a video: what has pictures to look
// at. An image has no duration.
func openPicture(ctx context.Context, res *locator.Resolver, item *workersdk.WorkItem) (*media, func(), error) {
	m, cleanup, err := openInput(ctx, res, item)
	switch {
	case err != nil:
		return nil, cleanup, err
	case !m.hasVideo || m.width == 0 || m.height == 0:
		return nil, cleanup, badMedia("has no picture (no video stream)")
	case !m.isImage && !hasDuration(m):
		return nil, cleanup, badMedia("has no duration")
	}
	return m, cleanup, nil
}

func badMedia(what string) error {
	return &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Invalid media",
		Detail: "input " + ParamInputFile + " " + what, Field: workersdk.LocatorField(ParamInputFile)}
}

func invalidParam(name, detail string) error {
	return &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Invalid input",
		Detail: fmt.Sprintf("parameter %s: %s", name, detail), Field: "input.parameters." + name}
}

// Parameter readers: absent means def; a value of the wrong type is an error.
func numberParam(item *workersdk.WorkItem, name string, def, lo, hi float64) (float64, error) {
	v, ok := item.GetInput().GetParameters().GetFields()[name]
	if !ok {
		return def, nil
	}
	n, isNum := v.GetKind().(*structpb.Value_NumberValue)
	if !isNum || math.IsNaN(n.NumberValue) || n.NumberValue < lo || n.NumberValue > hi {
		return 0, invalidParam(name, fmt.Sprintf("must be a number between %v and %v", lo, hi))
	}
	return n.NumberValue, nil
}

func stringParam(item *workersdk.WorkItem, name, def string, allowed ...string) (string, error) {
	v, ok := item.GetInput().GetParameters().GetFields()[name]
	if !ok {
		return def, nil
	}
	s, isStr := v.GetKind().(*structpb.Value_StringValue)
	if !isStr || (len(allowed) > 0 && !slices.Contains(allowed, s.StringValue)) {
		return "", invalidParam(name, fmt.Sprintf("must be one of %v", allowed))
	}
	return s.StringValue, nil
}

// outputs stores local files at the job's output location under their base
// names and returns the output locators keyed by the given output names.
type outputs struct {
	res  *locator.Resolver
	item *workersdk.WorkItem
	base string
}

// newOutputs checks the job's outputLocation, under the job's locator roots
// that ctx carries (the handler's), before any work is spent.
func newOutputs(ctx context.Context, res *locator.Resolver, item *workersdk.WorkItem) (*outputs, error) {
	base := item.GetInput().GetLocators()[ParamOutputLocation].GetUrl()
	if base == "" {
		return nil, &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Missing output location",
			Detail: fmt.Sprintf("output locator %q (a file:// directory, s3:// prefix or http(s) PUT URL) is required by profile %s", ParamOutputLocation, item.GetProfile()),
			Field:  workersdk.LocatorField(ParamOutputLocation)}
	}
	// Refuse a forbidden output before spending minutes on the work.
	if err := res.CheckContext(ctx, base); err != nil {
		return nil, workersdk.InputError(ParamOutputLocation, base, err)
	}
	return &outputs{res: res, item: item, base: base}, nil
}

// url is where the file called name goes; single says the profile writes
// only this file, which lets an http(s) location name it directly.
func (o *outputs) url(name string, single bool) (string, error) {
	u, err := locator.Join(o.base, name)
	if err != nil && single && (strings.HasPrefix(o.base, "http://") || strings.HasPrefix(o.base, "https://")) {
		return o.base, nil
	}
	if err != nil {
		return "", workersdk.InputError(ParamOutputLocation, o.base, err)
	}
	return u, nil
}

// put stores local file src as name and returns its locator.
func (o *outputs) put(ctx context.Context, src, name string, single bool) (*jobsv1.Locator, error) {
	u, err := o.url(name, single)
	if err != nil {
		return nil, err
	}
	if err := o.res.Put(ctx, u, src); err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		p := workersdk.InputError(ParamOutputLocation, u, err)
		var pe *problem.Error
		if errors.As(p, &pe) {
			pe.Title = "Output not stored"
		}
		return nil, p
	}
	return &jobsv1.Locator{Url: u}, nil
}

// runFFmpeg runs ffmpeg with args (the input, opened with mediaInput.args,
// and the output included), reporting progress 0..99 from its -progress
// stream against duration seconds. The process is killed when ctx ends. It
// returns ffmpeg's stderr (the tail kept for errors, all of it for filters
// that report there, bounded).
func runFFmpeg(ctx context.Context, duration float64, progress func(int), args ...string) (_ []byte, err error) {
	ctx, end := toolSpan(ctx, FFmpeg)
	defer func() { end(err) }()
	full := append([]string{"-hide_banner", "-nostdin", "-nostats", "-progress", "pipe:1", "-y"}, args...)
	cmd := exec.CommandContext(ctx, FFmpeg, full...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("ffmpeg stdout: %w", err)
	}
	stderr := &limitedBuffer{max: 8 << 20}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, workersdk.ToolError("ffmpeg", err, nil)
	}
	readProgress(stdout, duration, progress)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ffmpeg: %w", context.Cause(ctx))
		}
		return nil, ffmpegError(err, stderr.Bytes())
	}
	return stderr.Bytes(), nil
}

// readProgress parses ffmpeg's key=value progress lines until EOF.
func readProgress(r io.Reader, duration float64, progress func(int)) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || k != "out_time_us" || duration <= 0 {
			continue
		}
		us, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue // "N/A" before the first frame
		}
		progress(min(99, max(0, int(100*us/1e6/duration))))
	}
	_, _ = io.Copy(io.Discard, r)
}

// limitedBuffer keeps the first max bytes written (enough for any summary
// ffmpeg prints) and counts the rest away, so a chatty tool cannot exhaust
// memory.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// workDir is a temporary directory for a job's intermediate files.
func workDir() (string, func(), error) {
	d, err := os.MkdirTemp("", "medius-job-")
	if err != nil {
		return "", func() {}, fmt.Errorf("work dir: %w", err)
	}
	return d, func() { _ = os.RemoveAll(d) }, nil
}

// timecode formats seconds as HH:MM:SS.mmm.
func timecode(s float64) string {
	ms := int64(math.Round(s * 1000))
	return fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3600000, ms/60000%60, ms/1000%60, ms%1000)
}
