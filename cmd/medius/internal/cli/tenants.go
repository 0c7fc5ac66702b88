package cli

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

type tenant struct {
	ID            string    `json:"id"`
	DisplayName   string    `json:"displayName,omitempty"`
	Quota         quota     `json:"quota"`
	WebhookSecret string    `json:"webhookSecret,omitempty"`
	LocatorRoots  []string  `json:"locatorRoots,omitempty"`
	CreateTime    time.Time `json:"createTime"`
}

// roots shows a tenant's locator roots in a table cell.
func (t tenant) roots() string {
	if len(t.LocatorRoots) == 0 {
		return "-"
	}
	return strings.Join(t.LocatorRoots, ",")
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
	cmd := &cobra.Command{Use: "tenants", Short: "Manage tenants, their quotas and locator roots (admin credential)"}
	c.register(cmd, "admin-key", "MEDIUS_ADMIN_API_KEY", "admin credential")

	print := func(cmd *cobra.Command, ts ...tenant) error {
		if c.output == "json" {
			if len(ts) == 1 {
				return printJSON(cmd.OutOrStdout(), ts[0])
			}
			return printJSON(cmd.OutOrStdout(), ts)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tQUOTA\tLOCATOR ROOTS\tCREATED")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.DisplayName, t.Quota, t.roots(), t.CreateTime.Format(time.RFC3339))
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
	var roots []string
	var q quota
	quotaFlags := func(cmd *cobra.Command) {
		cmd.Flags().Int64Var(&q.MaxConcurrentJobs, "max-concurrent", 0, "maximum non-terminal jobs (0: unlimited)")
		cmd.Flags().Int64Var(&q.MaxJobsPerPeriod, "max-jobs", 0, "maximum jobs per period (0: unlimited)")
		cmd.Flags().Float64Var(&q.MaxQuantityPerPeriod, "max-quantity", 0, "maximum verified quantity (media seconds) per period (0: unlimited)")
		cmd.Flags().StringVar(&q.Period, "period", "month", "quota period: day or month")
	}
	create := &cobra.Command{
		Use: "create ID", Short: "Create a tenant (prints its webhook secret)", Args: cobra.ExactArgs(1),
		Example: "  medius tenants create acme --name 'Acme Corp' --max-concurrent 10 --locator-root file:///srv/media/acme/",
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			if err := c.do(cmd.Context(), "POST", "/v1/tenants", tenant{ID: args[0], DisplayName: name, Quota: q, LocatorRoots: roots}, &t); err != nil {
				return err
			}
			return printOne(cmd, t)
		},
	}
	create.Flags().StringVar(&name, "name", "", "display name")
	create.Flags().StringArrayVar(&roots, "locator-root", nil, "a URL prefix the tenant's file:// and s3:// locators may lie under (file:///dir/, s3://bucket/prefix/); repeatable; none: no such locators")
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
	setRoots := &cobra.Command{
		Use:   "set-locator-roots ID [ROOT...]",
		Short: "Replace a tenant's locator roots (none clears them)",
		Long: `Replace the URL prefixes a tenant's file:// and s3:// locators must lie
under: file:///dir/ (a directory of the workers' --file-roots), s3://bucket/ or
s3://bucket/prefix/. Workers read and write such locators with rights every
tenant shares, so a tenant may name only what lies under its roots; a tenant
without roots may name none (http(s) locators are not concerned). Jobs
created from now on are checked (on other mediator replicas within 2 s).`,
		Example: "  medius tenants set-locator-roots acme file:///srv/media/acme/ s3://media/acme/\n  medius tenants set-locator-roots acme   # clears them",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t tenant
			body := map[string][]string{"roots": append([]string{}, args[1:]...)}
			if err := c.do(cmd.Context(), "PUT", "/v1/tenants/"+url.PathEscape(args[0])+"/locator-roots", body, &t); err != nil {
				return err
			}
			return print(cmd, t)
		},
	}
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
	cmd.AddCommand(create, list, get, rotate, setQuota, setRoots, del)
	return cmd
}
