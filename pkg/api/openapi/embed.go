// Package openapi holds the OpenAPI (Swagger 2.0) document generated from
// proto/ for the REST API under /v1.
package openapi

import _ "embed"

// Document is medius.swagger.json.
//
//go:embed medius.swagger.json
var Document []byte
