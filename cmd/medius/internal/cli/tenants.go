package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

type tenant struct {
	ID            string    `json:"id"`
	DisplayName   string    `json:"displayName,omitempty"`
	Quota         quota     `json:"quota"`
	WebhookSecret string    `json:"webhookSecret,omitempty"`
	CreateTime    time.Time `json:"createTime"`
}

type quota struct {
	MaxConcurrentJobs    int64   `json:"maxConcurrentJobs,omitempty"`
	MaxJobsPerPeriod     int64   `json:"maxJobsPerPeriod,omitempty"`
	MaxQuantityPerPeriod float64 `json:"maxQuantityPerPeriod,omitempty"`
	Period               string  `json:"period,omitempty"`
}

func (q quota) String() string {
	lim := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprint(v)
	}
	p := q.Period
	if p == "" {
		p = "month"
	}
	return fmt.Sprintf("concurrent=%s jobs/%s=%s quantity/%s=%s", lim(float64(q.MaxConcurrentJobs)), p, lim(float64(q.MaxJobsPerPeriod)), p, lim(q.MaxQuantityPerPeriod))
}

func newTenantsCmd() *cobra.Command {
	var c restClient
	cmd := &cobra.Command{Use: "tenants", Short: "Manage tenants and their quotas (admin credential)"}
	c.register(cmd, "admin-key", "MEDIUS_ADMIN_API_KEY", "admin credential")

	print := func(cmd *cobra.Command, ts ...tenant) error {
		if c.output == "json" {
			if len(ts) == 1 {
				return printJSON(cmd.OutOrStdout(), ts[0])
			}
			return printJSON(cmd.OutOrStdout(), ts)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tQUOTA\tCREATED")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.DisplayName, t.Quota, t.CreateTime.Format(time.RFC3339))
		}
		return tw.Flush()
	}

	// printOne shows one tenant with its webhook secret, which the table
	// of several leaves out.
	printOne := func(cmd *cobra.Command, t tenant) error {
		if err := print(cmd, t); err != nil || c.output == "json" {
			return err
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "webhook secret: %s\n", t.WebhookSecret)
		return err
	}
	var name string
	var q quota
	quotaFlags := func(cmd *cobra.Command) {
		cmd.Flags().Int64Var(&q.MaxConcurrentJobs, "max-concurrent", 0, "maximum non-terminal jobs (0: unlimited)")
		cmd.Flags().Int64Var(&q.MaxJobsPerPeriod, "max-jobs", 0, "maximum jobs per period (0: unlimited)")
		cmd.Flags().Float64Var(&q.MaxQuantityPerPeriod, "max-quantity", 0, "maximum verified quantity (media seconds) per period (0: unlimited)")
		cmd.Flags().StringVar(&q.Period, "period", "month", "quota period: day or month")
	}
	create := &cobra.Command{
		Use: "create ID", Short: "Create a tenant (prints its webhook secret)", Args: cobra.ExactArgs(1),
		Example: "  medius tenants create acme --name 'Acme Corp' --max-concurrent 10",
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			if err := c.do(cmd.Context(), "POST", "/v1/tenants", tenant{ID: args[0], DisplayName: name, Quota: q}, &t); err != nil {
				return err
			}
			return printOne(cmd, t)
		},
	}
	create.Flags().StringVar(&name, "name", "", "display name")
	quotaFlags(create)

	list := &cobra.Command{
		Use: "list", Short: "List tenants", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct{ Tenants []tenant }
			if err := c.do(cmd.Context(), "GET", "/v1/tenants", nil, &out); err != nil {
				return err
			}
			return print(cmd, out.Tenants...)
		},
	}
	get := &cobra.Command{
		Use: "get ID", Short: "Show a tenant and its webhook secret", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			if err := c.do(cmd.Context(), "GET", "/v1/tenants/"+url.PathEscape(args[0]), nil, &t); err != nil {
				return err
			}
			return printOne(cmd, t)
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate-webhook-secret ID",
		Short: "Give a tenant a new webhook secret (the old one stops signing at once)",
		Long: `Give a tenant a new random webhook secret and show the tenant with it.

Notifications are signed with the new secret from the rotation on; the old
secret signs none, there is no period where both do. Switch the receivers'
verification to the new secret when you rotate.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			if err := c.do(cmd.Context(), "POST", "/v1/tenants/"+url.PathEscape(args[0])+"/webhook-secret:rotate", nil, &t); err != nil {
				return err
			}
			return printOne(cmd, t)
		},
	}
	setQuota := &cobra.Command{
		Use: "set-quota ID", Short: "Replace a tenant's quota", Args: cobra.ExactArgs(1),
		Example: "  medius tenants set-quota acme --max-concurrent 10 --max-quantity 36000 --period month",
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			if err := c.do(cmd.Context(), "PUT", "/v1/tenants/"+url.PathEscape(args[0])+"/quota", q, &t); err != nil {
				return err
			}
			return print(cmd, t)
		},
	}
	quotaFlags(setQuota)
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a tenant and revoke its keys", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do(cmd.Context(), "DELETE", "/v1/tenants/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, get, rotate, setQuota, del)
	return cmd
}
