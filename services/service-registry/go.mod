module github.com/medius-platform/medius/services/service-registry

go 1.26.0

require github.com/medius-platform/medius/pkg v0.0.0

replace github.com/medius-platform/medius/pkg => ../../pkg
