package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

type apiKey struct {
	ClientID     string    `json:"clientId"`
	ClientSecret string    `json:"clientSecret,omitempty"`
	Tenant       string    `json:"tenant"`
	Name         string    `json:"name,omitempty"`
	CreateTime   time.Time `json:"createTime"`
}

func newKeysCmd() *cobra.Command {
	var c restClient
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage a tenant's API keys (admin credential, or the tenant's own key)",
	}
	c.register(cmd, "key", "MEDIUS_ADMIN_API_KEY", "admin credential or the tenant's API key")
	var tenantID, name string
	cmd.PersistentFlags().StringVar(&tenantID, "tenant", "default", "tenant")

	create := &cobra.Command{
		Use: "create", Short: "Create an API key; its secret is shown once", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var k apiKey
			if err := c.do(cmd.Context(), "POST", "/v1/tenants/"+tenantID+"/keys", map[string]string{"name": name}, &k); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), k)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "client id:     %s\nclient secret: %s\n\n", k.ClientID, k.ClientSecret)
			fmt.Fprintln(out, "The secret is shown only now. Use it as a bearer key (MEDIUS_API_KEY),")
			fmt.Fprintln(out, "or exchange client id and secret for a token at POST /v1/auth/token.")
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a name to recognise the key by")
	list := &cobra.Command{
		Use: "list", Short: "List API keys (never their secrets)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct{ Keys []apiKey }
			if err := c.do(cmd.Context(), "GET", "/v1/tenants/"+tenantID+"/keys", nil, &out); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), out.Keys)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CLIENT ID\tNAME\tCREATED")
			for _, k := range out.Keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k.ClientID, k.Name, k.CreateTime.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use: "revoke CLIENT_ID", Short: "Revoke an API key and the tokens issued for it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do(cmd.Context(), "DELETE", "/v1/tenants/"+tenantID+"/keys/"+args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
