package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// maxBatchJobs is the most jobs one BatchCreateJobs call may carry: the
// mediator's jobapi.MaxBatchJobs, which refuses a larger batch whole. It is
// a copy, not an import: the CLI knows the mediator only by its API.
const maxBatchJobs = 1000

// maxBatchBytes bounds the encoded requests of one call: the mediator's
// jobapi.MaxBatchBytes, over which it refuses a batch whole, so a file of
// large jobs is sent in smaller calls than maxBatchJobs.
const maxBatchBytes = 3 << 20

// maxBatchAnswerBytes bounds the answer to one call the CLI reads. It is
// well above gRPC's default 4 MiB: a request that fits maxBatchBytes can
// have a larger answer, each job coming back with the fields the mediator
// set, and a repeated request id with its job as it is now (its output and
// executions too). Refusing that answer would hide jobs just created.
const maxBatchAnswerBytes = 64 << 20

// maxBatchLineBytes bounds one line of the file: a job's JSON is larger
// than its encoding, but one this large could not fit any call.
const maxBatchLineBytes = 4 * grpcx.MaxMessageBytes

// batchLine is a job read from the file, with where it was.
type batchLine struct {
	line int
	req  *jobsv1.CreateJobRequest
	size int // bytes it adds to a BatchCreateJobsRequest
}

func newSubmitBatchCmd(c *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "submit-batch FILE",
		Short: "Submit the jobs of a file, one JSON job per line (FILE - reads stdin)",
		Long: `Submit the jobs of FILE (- reads stdin), one per line, each a JSON job as
POST /v1/jobs takes it:

  {"profile":"NoOp"}
  {"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"file:///media/a.wav"}}},"requestId":"a-1"}

Blank lines are skipped. The whole file is read first: if a line is not a job
(bad JSON, an unknown field, a requestId an earlier line has), its number is
reported and nothing is submitted.
The jobs are then sent in calls of up to 1000 (BatchCreateJobs). A job the
mediator finds invalid (an unknown profile, say) fails its call whole, the
error naming its line; the jobs of earlier calls stay created. With a
requestId on every job, the file can be submitted again after any failure:
a job created the first time is answered again, not created twice.

One row is printed per job: its line, its id and status, or "-" and why it
was not created (problem type: detail). With -o json, one indented object per
job, {"line": N, "job": {...}} or {"line": N, "error": {problem}}, one after
another, in the file's order (jq -r '.job.id // empty' lists the ids).

Exit status 0 if every job was created (or found by its requestId), 1 if any
was not, their number on stderr.`,
		Example: `  medius jobs submit-batch jobs.ndjson
  jq -Rc '{profile:"ExtractTechnicalMetadata",input:{locators:{inputFile:{url:.}}},requestId:.}' urls.txt | medius jobs submit-batch -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The file is read before dialing: a typo in it needs no
			// mediator to be found.
			lines, err := readBatchArg(cmd, args[0])
			if err != nil {
				return err
			}
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			p := &batchPrinter{w: cmd.OutOrStdout(), format: c.output}
			notCreated := 0
			for _, b := range splitBatches(lines) {
				reqs := make([]*jobsv1.CreateJobRequest, b.to-b.from)
				for i, l := range lines[b.from:b.to] {
					reqs[i] = l.req
				}
				resp, err := cl.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{Requests: reqs}, grpc.MaxCallRecvMsgSize(maxBatchAnswerBytes))
				if err != nil {
					return batchFailed(err, lines, b)
				}
				if got := len(resp.GetResults()); got != len(reqs) {
					return fmt.Errorf("%s: the mediator answered %d results for %d jobs", lineRange(lines[b.from].line, lines[b.to-1].line), got, len(reqs))
				}
				n, err := p.print(lines[b.from:b.to], resp.GetResults())
				if err != nil {
					return err
				}
				notCreated += n
			}
			if notCreated > 0 {
				return fmt.Errorf("%d of %d jobs not created", notCreated, len(lines))
			}
			return nil
		},
	}
}

func readBatchArg(cmd *cobra.Command, arg string) ([]batchLine, error) {
	if arg == "-" {
		return readBatch(cmd.InOrStdin(), "stdin")
	}
	f, err := os.Open(arg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBatch(f, arg)
}

// readBatch reads every job of r, named name in errors. A line that is not
// a job fails the whole read, so a file is submitted entire or not at all;
// the first such line is named, and how many more there are.
func readBatch(r io.Reader, name string) ([]batchLine, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxBatchLineBytes)
	var lines []batchLine
	var first error
	bad, n := 0, 0
	requestIDs := map[string]int{} // line of each request id
	for sc.Scan() {
		n++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		job := &jobsv1.Job{}
		if err := protojson.Unmarshal(text, job); err != nil {
			if bad++; first == nil {
				first = fmt.Errorf("%s line %d: %s", name, n, jsonError(err))
			}
			continue
		}
		// The mediator refuses one request id twice in a call; across calls
		// the second would be answered with the first's job. Either way a
		// line would not be the job it says: refused before anything is sent.
		if id := job.GetRequestId(); id != "" {
			if at, ok := requestIDs[id]; ok {
				if bad++; first == nil {
					first = fmt.Errorf("%s line %d: requestId %q repeats line %d's", name, n, id, at)
				}
				continue
			}
			requestIDs[id] = n
		}
		req := &jobsv1.CreateJobRequest{Job: job}
		size := protowire.SizeTag(1) + protowire.SizeBytes(proto.Size(req))
		if size > maxBatchBytes {
			if bad++; first == nil {
				first = fmt.Errorf("%s line %d: job of %d bytes, more than the mediator takes in a call (%d)", name, n, size, maxBatchBytes)
			}
			continue
		}
		lines = append(lines, batchLine{line: n, req: req, size: size})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s line %d: longer than %d bytes; nothing submitted", name, n+1, maxBatchLineBytes)
		}
		return nil, fmt.Errorf("read %s: %w; nothing submitted", name, err)
	}
	switch {
	case bad > 1:
		return nil, fmt.Errorf("%w (and %d more bad lines); nothing submitted", first, bad-1)
	case bad == 1:
		return nil, fmt.Errorf("%w; nothing submitted", first)
	case len(lines) == 0:
		return nil, fmt.Errorf("%s holds no jobs", name)
	}
	return lines, nil
}

// protojsonPos is where protojson's error says it found the fault. Its line
// is always 1, each job being one line of its own, and would be read as the
// file's; the column is worth keeping. protojson spells "proto:" with a
// space or a non-breaking space, at random, so neither is relied upon.
var protojsonPos = regexp.MustCompile(`^proto:[\s\x{00a0}]*(?:\(line \d+:(\d+)\):[\s\x{00a0}]*)?`)

func jsonError(err error) string {
	msg := err.Error()
	m := protojsonPos.FindStringSubmatchIndex(msg)
	if m == nil {
		return msg
	}
	rest := msg[m[1]:]
	if m[2] >= 0 {
		return rest + " (column " + msg[m[2]:m[3]] + ")"
	}
	return rest
}

// batchSpan is one call's jobs: lines[from:to].
type batchSpan struct{ from, to int }

// splitBatches cuts lines into calls of at most maxBatchJobs jobs and
// maxBatchBytes bytes, in the file's order.
func splitBatches(lines []batchLine) []batchSpan {
	var spans []batchSpan
	from, size := 0, 0
	for i, l := range lines {
		if i > from && (i-from == maxBatchJobs || size+l.size > maxBatchBytes) {
			spans = append(spans, batchSpan{from, i})
			from, size = i, 0
		}
		size += l.size
	}
	return append(spans, batchSpan{from, len(lines)})
}

// requestRef is how the mediator names a job of a call: requests[i], an
// index into the call, which the user knows as a line of the file.
var requestRef = regexp.MustCompile(`requests\[(\d+)\]`)

// fieldRef is a field of a call's job, requests[i].job.profile say.
var fieldRef = regexp.MustCompile(`^requests\[(\d+)\]\.?`)

// relined returns p with requests[i] said as the line of the file the job
// came from (batch holding the call's jobs): the field names the field of
// the line's job, and the detail names the line.
func relined(p *jobsv1.Problem, batch []batchLine) *jobsv1.Problem {
	p = proto.Clone(p).(*jobsv1.Problem)
	if m := fieldRef.FindString(p.Field); m != "" {
		if !requestRef.MatchString(p.Detail) {
			p.Detail = strings.TrimSuffix(m, ".") + ": " + p.Detail
		}
		p.Field = strings.TrimPrefix(p.Field, m)
	}
	p.Detail = requestRef.ReplaceAllStringFunc(p.Detail, func(ref string) string {
		i, err := strconv.Atoi(requestRef.FindStringSubmatch(ref)[1])
		if err != nil || i >= len(batch) {
			return ref
		}
		return fmt.Sprintf("line %d", batch[i].line)
	})
	return p
}

// batchFailed makes a failed call's error say where the file stands: the
// lines of earlier calls were submitted (and printed), the call's own were
// refused (InvalidArgument: checked before any is created) or may have
// been created, and the lines after were not sent.
func batchFailed(err error, lines []batchLine, b batchSpan) error {
	var notes []string
	if b.from > 0 {
		notes = append(notes, lineRange(lines[0].line, lines[b.from-1].line)+" submitted, results above")
	}
	st, ok := status.FromError(err)
	if ok && st.Code() != codes.InvalidArgument {
		notes = append(notes, lineRange(lines[b.from].line, lines[b.to-1].line)+" may or may not have been created")
	}
	if b.to < len(lines) {
		notes = append(notes, lineRange(lines[b.to].line, lines[len(lines)-1].line)+" not submitted")
	}
	if !ok {
		if len(notes) == 0 {
			return err
		}
		return fmt.Errorf("%w; %s", err, strings.Join(notes, "; "))
	}
	p := relined(problem.FromStatus(st), lines[b.from:b.to])
	if len(notes) > 0 {
		p.Detail += "; " + strings.Join(notes, "; ")
	}
	// A problem error, not a wrap of the status: Describe renders it as
	// any other, and status.Code still says what the mediator answered.
	return &problem.Error{Code: st.Code(), Type: strings.TrimPrefix(p.Type, problem.TypePrefix), Title: p.Title, Detail: p.Detail, Field: p.Field}
}

func lineRange(first, last int) string {
	if first == last {
		return fmt.Sprintf("line %d", first)
	}
	return fmt.Sprintf("lines %d-%d", first, last)
}

// batchPrinter writes the results of a file's calls as they come, the
// table's header once.
type batchPrinter struct {
	w       io.Writer
	format  string
	started bool
}

// batchResultJSON is one result of -o json: the API's BatchCreateJobsResult
// with the line it answers, which the job or problem alone do not say.
type batchResultJSON struct {
	Line  int             `json:"line"`
	Job   json.RawMessage `json:"job,omitempty"`
	Error json.RawMessage `json:"error,omitempty"`
}

// print writes the results of one call, whose jobs were batch, and returns
// how many were not created.
func (p *batchPrinter) print(batch []batchLine, results []*jobsv1.BatchCreateJobsResult) (int, error) {
	notCreated := 0
	if p.format == "json" {
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		// Locators are URLs: their & stays as it is.
		enc.SetEscapeHTML(false)
		for i, r := range results {
			out := batchResultJSON{Line: batch[i].line}
			var err error
			if job := r.GetJob(); job != nil {
				out.Job, err = protojson.Marshal(job)
			} else {
				notCreated++
				out.Error, err = protojson.Marshal(relined(resultProblem(r), batch))
			}
			if err != nil {
				return 0, err
			}
			if err := enc.Encode(out); err != nil {
				return 0, err
			}
		}
		return notCreated, nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	if !p.started {
		fmt.Fprintln(tw, "LINE\tID\tRESULT")
		p.started = true
	}
	for i, r := range results {
		id, result := "-", ""
		if job := r.GetJob(); job != nil {
			id, result = job.GetId(), jobstate.Name(job.GetStatus())
		} else {
			notCreated++
			e := relined(resultProblem(r), batch)
			result = strings.TrimPrefix(e.GetType(), problem.TypePrefix)
			if d := e.GetDetail(); d != "" {
				result += ": " + d
			}
			result = oneLine(result)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", batch[i].line, id, result)
	}
	// Flushed per call: a long file shows its progress, and the rows of
	// calls that succeeded are out before a later call's error.
	return notCreated, tw.Flush()
}

// resultProblem is why r holds no job: its error, or, should the mediator
// answer neither, a problem saying so.
func resultProblem(r *jobsv1.BatchCreateJobsResult) *jobsv1.Problem {
	if e := r.GetError(); e != nil {
		return e
	}
	return &jobsv1.Problem{Type: problem.TypePrefix + "no-result", Title: "No result", Detail: "the mediator answered neither a job nor an error"}
}
