package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newUsageCmd() *cobra.Command {
	var c restClient
	var from, to, groupBy string
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show the tenant's billable usage (verified quantity of completed jobs)",
		Example: `  medius usage --from 2026-11-01 --to 2026-12-01 --group-by profile
  medius usage --group-by day -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"from": from, "to": to, "group_by": groupBy} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var out struct {
				Tenant   string  `json:"tenant"`
				GroupBy  string  `json:"groupBy"`
				Jobs     int64   `json:"jobs"`
				Quantity float64 `json:"quantity"`
				Groups   []struct {
					Key      string  `json:"key"`
					Jobs     int64   `json:"jobs"`
					Quantity float64 `json:"quantity"`
				} `json:"groups"`
			}
			if err := c.do(cmd.Context(), "GET", "/v1/usage?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			head := groupBy
			if head == "" {
				head = "tenant"
			}
			fmt.Fprintf(tw, "%s\tJOBS\tQUANTITY (s)\n", head)
			for _, g := range out.Groups {
				key := g.Key
				if groupBy == "" {
					key = out.Tenant
				}
				fmt.Fprintf(tw, "%s\t%d\t%.3f\n", key, g.Jobs, g.Quantity)
			}
			if groupBy != "" {
				fmt.Fprintf(tw, "total\t%d\t%.3f\n", out.Jobs, out.Quantity)
			}
			return tw.Flush()
		},
	}
	c.register(cmd, "api-key", "MEDIUS_API_KEY", "API key or token of the tenant")
	cmd.Flags().StringVar(&from, "from", "", "start (RFC 3339 or YYYY-MM-DD, inclusive)")
	cmd.Flags().StringVar(&to, "to", "", "end (RFC 3339 or YYYY-MM-DD, exclusive)")
	cmd.Flags().StringVar(&groupBy, "group-by", "", "profile or day")
	return cmd
}
