package profiles

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/codes"
)

// FaceEngine is the face detector DetectFaces runs: OpenCV's frontal-face
// Haar cascade, driven from Python, each of its candidates confirmed by a
// second, independently trained cascade. One cascade alone, at a recall
// that finds 22 px faces, also finds faces in test patterns and in the
// folds of clothes; the two rarely agree on those.
type FaceEngine struct {
	// Python is an interpreter that can import cv2. Debian's
	// /usr/bin/python3 is named explicitly: another python3 earlier on
	// PATH (pyenv, a venv) has no python3-opencv.
	Python string
	// Cascade finds candidates, Confirm confirms them (Debian opencv-data).
	Cascade, Confirm string
}

// DefaultFaceEngine is the engine of Debian's python3-opencv and
// opencv-data packages.
func DefaultFaceEngine() FaceEngine {
	return FaceEngine{
		Python:  "/usr/bin/python3",
		Cascade: "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
		Confirm: "/usr/share/opencv4/haarcascades/haarcascade_frontalface_alt2.xml",
	}
}

// faceScript is the detector run by e.Python -c. It reads PGM frames
// (ffmpeg -f image2pipe -c:v pgm) from stdin and prints one JSON line per
// frame as it goes, so the worker reports progress from the tool itself.
// Argv: CASCADE CONFIRM MIN_NEIGHBORS MIN_FACE_FRACTION [--check]. The first line
// names the engine; a frame line is {"frame", "width", "height", "faces":
// [[x, y, w, h, neighbors]...]}; a missing engine is one line {"error",
// "package"} and exit status 3. Kept in Go source so the binary carries it.
const faceScript = `
import json
import os
import sys


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def unavailable(detail, package):
    emit({"error": detail, "package": package})
    sys.exit(3)


try:
    import cv2
    import numpy
except ImportError as e:
    unavailable("cannot import OpenCV in %s: %s" % (sys.executable, e), "python3-opencv")



def load(path):
    if not os.path.isfile(path):
        unavailable("no Haar cascade at %s" % path, "opencv-data")
    try:
        c = cv2.CascadeClassifier(path)
        if not c.empty():
            return c
    except Exception:  # a file that is not a cascade raises rather than loading empty
        pass
    unavailable("cannot load the Haar cascade %s" % path, "opencv-data")


cascade_path, confirm_path = sys.argv[1], sys.argv[2]
min_neighbors, min_fraction = int(sys.argv[3]), float(sys.argv[4])
cascade, confirm = load(cascade_path), load(confirm_path)
# One thread: a worker runs several jobs at once, and threads contending
# for the cores make each job slower.
cv2.setNumThreads(1)
emit({"engine": "OpenCV", "version": cv2.__version__,
      "cascade": "%s confirmed by %s" % (os.path.basename(cascade_path), os.path.basename(confirm_path))})
if "--check" in sys.argv[5:]:
    sys.exit(0)

stdin = sys.stdin.buffer


def header_token(first):
    tok = b""
    while True:
        c = stdin.read(1)
        if not c:
            if first and not tok:
                return None
            raise ValueError("truncated PGM header")
        if c.isspace():
            if tok:
                return tok
            continue
        tok += c


def read_frame():
    magic = header_token(True)
    if magic is None:
        return None
    if magic != b"P5":
        raise ValueError("not a PGM frame (magic %r)" % magic)
    w, h, maxval = (int(header_token(False)) for _ in range(3))
    if maxval > 255:
        raise ValueError("16-bit PGM frames are not supported")
    data = stdin.read(w * h)
    if len(data) != w * h:
        raise ValueError("truncated PGM frame")
    return numpy.frombuffer(data, numpy.uint8).reshape(h, w)


def confirmed(frame, x, y, w, h):
    # The second cascade looks around the candidate, for a face of about
    # its size.
    m = w // 4
    roi = frame[max(0, y - m):y + h + m, max(0, x - m):x + w + m]
    lo, hi = max(20, int(0.6 * w)), int(1.5 * w) + 1
    return len(confirm.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=2, minSize=(lo, lo), maxSize=(hi, hi))) > 0


n = 0
while True:
    frame = read_frame()
    if frame is None:
        break
    h, w = frame.shape
    # 24 px is the cascade's window: no smaller face can be found.
    size = max(24, int(round(min_fraction * h)))
    # No histogram equalisation: the cascade normalises each window's
    # contrast itself, and equalising a frame that is mostly one flat colour
    # (a letterbox, a studio wall) wrecks the face's contrast.
    rects, neighbors = cascade.detectMultiScale2(frame, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(size, size))
    faces = [[int(v) for v in r] + [int(k)] for r, k in zip(rects, neighbors) if confirmed(frame, *r)]
    emit({"frame": n, "width": w, "height": h, "faces": faces})
    n += 1
`

// faceWindow is the cascade's window in pixels, the smallest face it finds.
const faceWindow = 24

// faceFrame is the detector's line for one frame: its size and the faces
// found, each [x, y, width, height, neighbors] in its pixels.
type faceFrame struct {
	Frame  int      `json:"frame"`
	Width  int      `json:"width"`
	Height int      `json:"height"`
	Faces  [][5]int `json:"faces"`
}

// detectorLine is any line the detector prints.
type detectorLine struct {
	faceFrame
	Engine  string `json:"engine"`
	Version string `json:"version"`
	Cascade string `json:"cascade"`
	Error   string `json:"error"`
	Package string `json:"package"`
}

// faceRun is what one detector run found.
type faceRun struct {
	engine string // "OpenCV 4.6.0 haarcascade_frontalface_default.xml confirmed by ..."
	frames []faceFrame
}

// engineUnavailable is the problem of a worker whose face engine is not
// installed, naming the Debian package that brings it.
func engineUnavailable(detail, pkg string) error {
	return &problem.Error{Code: codes.FailedPrecondition, Type: workersdk.TypeToolFailed, Title: "Face detector unavailable",
		Detail: fmt.Sprintf("the OpenCV face detector is not installed on this worker: %s (Debian package %s)", detail, pkg)}
}

// Check runs the detector's self-test (cv2 imports, the cascade loads) and
// returns the engine's name and version, or the problem naming what to
// install.
func (e FaceEngine) Check(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Python, "-c", faceScript, e.Cascade, e.Confirm, "1", "0.1", "--check")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	if errors.Is(runErr, exec.ErrNotFound) || errors.Is(runErr, os.ErrNotExist) {
		return "", engineUnavailable(fmt.Sprintf("cannot run %s: %v", e.Python, runErr), "python3-opencv")
	}
	var l detectorLine
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &l); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("face detector check: %w", ctx.Err())
		}
		return "", workersdk.ToolError("face detector check", errors.Join(runErr, err), stderr.Bytes())
	}
	if l.Error != "" {
		return "", engineUnavailable(l.Error, l.Package)
	}
	if runErr != nil {
		return "", workersdk.ToolError("face detector check", runErr, stderr.Bytes())
	}
	return l.Engine + " " + l.Version + " " + l.Cascade, nil
}

// detect runs ffmpeg with ffArgs (input, filters; it must write PGM frames
// to stdout) piped into the detector, and returns every frame's faces.
// progress goes from 0 to 99 as the detector gets through expected frames.
// Both processes are killed when ctx ends.
func (e FaceEngine) detect(ctx context.Context, ffArgs []string, minNeighbors int, minFace float64, expected int, progress func(int)) (run faceRun, err error) {
	parent := ctx
	// Canceled when the detector fails, so ffmpeg does not decode on for
	// nothing.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	frames, feed, err := os.Pipe()
	if err != nil {
		return run, fmt.Errorf("frame pipe: %w", err)
	}
	closePipe := func() { _ = frames.Close(); _ = feed.Close() }

	pyCtx, pyEnd := toolSpan(ctx, e.Python)
	py := exec.CommandContext(pyCtx, e.Python, "-c", faceScript, e.Cascade, e.Confirm, strconv.Itoa(minNeighbors), strconv.FormatFloat(minFace, 'g', -1, 64))
	py.Stdin = frames
	out, err := py.StdoutPipe()
	if err != nil {
		closePipe()
		pyEnd(err)
		return run, fmt.Errorf("face detector stdout: %w", err)
	}
	pyErr := &limitedBuffer{max: 64 << 10}
	py.Stderr = pyErr
	py.WaitDelay = 5 * time.Second
	if err := py.Start(); err != nil {
		closePipe()
		pyEnd(err)
		return run, engineUnavailable(fmt.Sprintf("cannot run %s: %v", e.Python, err), "python3-opencv")
	}

	ffCtx, ffEnd := toolSpan(ctx, FFmpeg)
	ff := exec.CommandContext(ffCtx, FFmpeg, append([]string{"-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"}, ffArgs...)...)
	ff.Stdout = feed
	ffErr := &limitedBuffer{max: 64 << 10}
	ff.Stderr = ffErr
	ff.WaitDelay = 5 * time.Second
	ffStartErr := ff.Start()
	// The children hold their own ends: ours would keep the detector from
	// ever seeing the end of the frames.
	closePipe()
	if ffStartErr != nil {
		cancel()
		_ = py.Wait()
		pyEnd(nil)
		ffEnd(ffStartErr)
		return run, workersdk.ToolError("ffmpeg", ffStartErr, nil)
	}

	run, unavailable, readErr := readDetector(out, expected, progress)
	if readErr != nil || unavailable != nil {
		cancel()
	}
	pyWaitErr := py.Wait()
	ffWaitErr := ff.Wait()
	pyEnd(pyWaitErr)
	ffEnd(ffWaitErr)
	// ffmpeg's broken pipe is the detector's death, not the media's fault.
	ffBroke := ffWaitErr != nil && pyWaitErr != nil && bytes.Contains(ffErr.Bytes(), []byte("Broken pipe"))
	switch {
	case parent.Err() != nil:
		return run, fmt.Errorf("face detection: %w", context.Cause(parent))
	case unavailable != nil:
		return run, unavailable
	case readErr != nil:
		return run, workersdk.ToolError("face detector", readErr, pyErr.Bytes())
	case ffWaitErr != nil && !ffBroke:
		return run, ffmpegError(ffWaitErr, ffErr.Bytes())
	case pyWaitErr != nil:
		return run, workersdk.ToolError("face detector", pyWaitErr, pyErr.Bytes())
	}
	return run, nil
}

// readDetector reads the detector's lines until EOF, reporting progress
// per frame. unavailable is the detector's report of a missing engine.
func readDetector(r io.Reader, expected int, progress func(int)) (run faceRun, unavailable, err error) {
	defer func() { _, _ = io.Copy(io.Discard, r) }()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l detectorLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return run, nil, fmt.Errorf("parse detector output %.200q: %w", sc.Text(), err)
		}
		switch {
		case l.Error != "":
			return run, engineUnavailable(l.Error, l.Package), nil
		case l.Engine != "":
			run.engine = l.Engine + " " + l.Version + " " + l.Cascade
		case l.Width > 0 && l.Height > 0:
			if l.Frame != len(run.frames) {
				return run, nil, fmt.Errorf("detector reported frame %d after %d frames", l.Frame, len(run.frames))
			}
			run.frames = append(run.frames, l.faceFrame)
			progress(min(99, 100*len(run.frames)/max(expected, 1)))
		default:
			return run, nil, fmt.Errorf("unexpected detector output %.200q", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		return run, nil, fmt.Errorf("read detector output: %w", err)
	}
	return run, nil, nil
}
