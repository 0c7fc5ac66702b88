package profiles

import (
	"bytes"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/codes"
)

// inputFormats are the only demuxers ffprobe and ffmpeg may use on a job's
// input file. ffmpeg picks the demuxer from the file's content, not its
// name, and some demuxers open the files or URLs the input names: an HLS
// playlist or DASH manifest its segments, an (ff)concat list its entries,
// image2 a numbered or globbed sequence, IMF its assets, SDP its RTP
// sockets. Called clip.mp4, such a file would make a job read another
// tenant's media, or any file the worker can read, outside every locator
// root. So only self-contained containers and streams are listed: each
// reads the one file it is given (the mov demuxer's external data
// references stay off, its enable_drefs default). A name matches a
// demuxer by any of its aliases ("mov" is mov,mp4,m4a,3gp,3g2,mj2;
// "matroska" is matroska,webm). Keep docs/worker-sdk.md in step.
var inputFormats = strings.Join([]string{
	// Broadcast and production containers.
	"mov", "mxf", "mpegts", "mpeg", "matroska", "avi", "gxf", "lxf", "dv", "flv", "asf", "nut", "ogg",
	// Audio files and elementary audio streams.
	"wav", "w64", "aiff", "caf", "flac", "mp3", "aac", "ac3", "eac3", "dts", "loas",
	// Elementary video streams.
	"h264", "hevc", "m4v", "mpegvideo", "dnxhd", "ivf", "yuv4mpegpipe",
	// Still images known by their signature, one file each. Not image2:
	// it reads numbered or globbed sequences (see mediaInput.image).
	"png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "dpx_pipe", "j2k_pipe", "gif",
}, ",")

// mediaInput is how ffprobe and ffmpeg open a job's input file at path
// (absolute, from pkg/locator, so never taken for an option or a protocol
// URL). Every invocation reading job-supplied input opens it with args, so
// a file swapped after the probe is held to the same rules.
type mediaInput struct {
	path string
	// image: a still image ffmpeg knows by its extension only (a photo
	// whose EXIF or ICC data hides its JPEG signature from the probe). It
	// is read by image2 forced to this one file (pattern_type none), never
	// as a numbered or globbed sequence.
	image bool
}

// args are the arguments opening the input, -i included. The protocol
// whitelist is inherited by any nested open: even a listed demuxer could
// reach no network or crypto/data URL.
func (in mediaInput) args() []string {
	if in.image {
		return []string{"-protocol_whitelist", "file", "-f", "image2", "-pattern_type", "none", "-i", in.path}
	}
	return []string{"-protocol_whitelist", "file", "-format_whitelist", inputFormats, "-i", in.path}
}

// imageRetry reports whether an input refused as image2 is read again as
// one image. Not a .y file: image2 reads its .u and .v planes beside it.
func imageRetry(refused, path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return refused == "image2" && ext != ".y" && ext != ""
}

// reRefused is how ffmpeg and ffprobe report a format refused by
// -format_whitelist: the log line names the demuxer the content probed as.
var reRefused = regexp.MustCompile(`\[([A-Za-z0-9_,]+) @ 0x[0-9a-f]+\] Format not on whitelist`)

// refusedFormat returns the demuxer a tool's stderr says -format_whitelist
// refused ("unknown" if unnamed), or "" when it failed for another reason.
func refusedFormat(stderr []byte) string {
	if !bytes.Contains(stderr, []byte("Format not on whitelist")) {
		return ""
	}
	if m := reRefused.FindSubmatch(stderr); m != nil {
		return string(m[1])
	}
	return "unknown"
}

// unsupportedFormat is the problem of an input whose format is not in
// inputFormats: the client's error (invalid-input), naming the format.
func unsupportedFormat(name string) error {
	return &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Unsupported media format",
		Detail: "input " + ParamInputFile + ": input format not supported: " + name +
			"; the built-in profiles read only self-contained media files (MP4/MOV, MXF, MPEG-TS/PS, Matroska/WebM, AVI, WAV, FLAC, MP3, AAC, Ogg, raw H.264/HEVC/MPEG video, single still images), never playlists, manifests or lists naming other files",
		Field: workersdk.LocatorField(ParamInputFile)}
}

// ffmpegError is the problem of a failed ffmpeg run on a job's input.
func ffmpegError(err error, stderr []byte) error {
	if name := refusedFormat(stderr); name != "" {
		return unsupportedFormat(name)
	}
	return workersdk.ToolError("ffmpeg", err, stderr)
}
