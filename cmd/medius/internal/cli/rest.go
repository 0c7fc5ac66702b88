package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// restClient calls the mediator's REST API (tenants, keys, usage have no
// gRPC surface).
type restClient struct {
	url    string
	key    string
	keyEnv string
	output string
}

func (c *restClient) register(cmd *cobra.Command, keyFlag, keyEnv, keyHelp string) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.url, "rest-url", envOr("MEDIUS_REST_URL", "http://127.0.0.1:8080"), "mediator REST base URL (MEDIUS_REST_URL)")
	// The environment is read when the key is used, not as the flag's
	// default: --help would print the secret.
	c.keyEnv = keyEnv
	f.StringVar(&c.key, keyFlag, "", keyHelp+" (default $"+keyEnv+")")
	f.StringVarP(&c.output, "output", "o", "table", "output: table or json")
}

// restError is a problem+json answer.
type restError struct {
	Status int    `json:"status"`
	Type   string `json:"type"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Field  string `json:"field"`
}

func (e *restError) Error() string { return problemLine(e.Title, e.Type, e.Detail, e.Field) }

// do sends body (JSON, when not nil) and decodes the answer into out.
func (c *restClient) do(ctx context.Context, method, path string, body, out any) error {
	if c.key == "" {
		c.key = os.Getenv(c.keyEnv)
	}
	if c.key == "" {
		return errors.New("no credential: see --help for the key flag and variable")
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.url, "/")+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		pe := &restError{}
		if json.Unmarshal(data, pe) != nil || pe.Title == "" {
			return fmt.Errorf("%s %s: %s", method, path, resp.Status)
		}
		return pe
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
