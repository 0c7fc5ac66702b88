package locator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// S3Config reaches an S3-compatible store. The endpoint is the operator's
// choice, so the private-address policy of http(s) locators does not apply
// to it.
type S3Config struct {
	// Endpoint is the store's base URL (e.g. http://127.0.0.1:7070); empty
	// means AWS S3 for Region.
	Endpoint string
	// Region signs requests (default us-east-1).
	Region string
	// AccessKey and SecretKey are static credentials; empty means the AWS
	// default chain is not consulted and requests go unsigned-anonymous
	// (public buckets only).
	AccessKey string
	SecretKey string
	// VirtualHosted addresses buckets as <bucket>.<endpoint>; the default,
	// path style, is what most S3-compatible stores expect.
	VirtualHosted bool
}

// NewS3Client returns an S3 client for c.
func NewS3Client(c *S3Config) *s3.Client {
	region := c.Region
	if region == "" {
		region = "us-east-1"
	}
	opts := s3.Options{
		Region:       region,
		UsePathStyle: !c.VirtualHosted,
		// Stores other than AWS often reject the newer default checksums.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		HTTPClient:                 &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, ResponseHeaderTimeout: DefaultHeaderTimeout}},
	}
	if c.Endpoint != "" {
		opts.BaseEndpoint = aws.String(c.Endpoint)
	}
	if c.AccessKey != "" {
		opts.Credentials = credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, "")
	} else {
		opts.Credentials = aws.AnonymousCredentials{}
	}
	return s3.New(opts)
}

func (r *Resolver) s3Client() (*s3.Client, error) {
	if r.S3 == nil {
		return nil, fmt.Errorf("%w: s3 locators need an S3 store configured (--s3-endpoint, --s3-region, credentials)", ErrUnsupportedScheme)
	}
	r.s3Once.Do(func() { r.s3 = NewS3Client(r.S3) })
	return r.s3, nil
}

func s3BucketKey(u *url.URL) (bucket, key string) {
	return u.Host, strings.TrimPrefix(u.Path, "/")
}

// s3Err classifies an S3 API error.
func s3Err(ctx context.Context, op string, u *url.URL, err error) error {
	target := Redact(u.String())
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w", op, target, context.Cause(ctx))
	}
	var re *awshttp.ResponseError
	status := 0
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	var api smithy.APIError
	code := ""
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	var kind error
	switch {
	case code == "NoSuchKey" || code == "NoSuchBucket" || code == "NotFound" || status == http.StatusNotFound:
		kind = ErrNotFound
	case code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" ||
		status == http.StatusForbidden || status == http.StatusUnauthorized:
		kind = ErrForbidden
	case code == "EntityTooLarge":
		kind = ErrTooLarge
	default:
		kind = ErrUnavailable
	}
	msg := code
	if msg == "" {
		msg = err.Error()
	}
	return fmt.Errorf("%w: %s %s: %s", kind, op, target, msg)
}

// s3Download fetches s3://bucket/key into a temporary file.
func (r *Resolver) s3Download(parent context.Context, u *url.URL) (_ string, err error) {
	c, err := r.s3Client()
	if err != nil {
		return "", err
	}
	bucket, key := s3BucketKey(u)
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return "", s3Err(ctx, "GET", u, err)
	}
	defer out.Body.Close()
	limit := r.maxBytes()
	if n := aws.ToInt64(out.ContentLength); n > limit {
		return "", fmt.Errorf("%w: GET %s: %d bytes, limit %d", ErrTooLarge, Redact(u.String()), n, limit)
	}
	f, err := os.CreateTemp(r.TempDir, "medius-input-*"+path.Ext(key))
	if err != nil {
		return "", fmt.Errorf("%w: temp file: %w", ErrUnavailable, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	stall := r.stallTimeout()
	timer := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer timer.Stop()
	n, err := io.Copy(f, io.LimitReader(&stallReader{r: out.Body, timer: timer, period: stall}, limit+1))
	if err != nil {
		return "", transferErr(ctx, "GET", u, err)
	}
	if n > limit {
		return "", fmt.Errorf("%w: GET %s: more than %d bytes", ErrTooLarge, Redact(u.String()), limit)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("%w: write temp file: %w", ErrUnavailable, err)
	}
	return f.Name(), nil
}

// s3Upload stores size bytes of body at s3://bucket/key.
func (r *Resolver) s3Upload(ctx context.Context, u *url.URL, body io.ReadSeeker, size int64) error {
	c, err := r.s3Client()
	if err != nil {
		return err
	}
	bucket, key := s3BucketKey(u)
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: body, ContentLength: aws.Int64(size)}); err != nil {
		return s3Err(ctx, "PUT", u, err)
	}
	return nil
}

// Join names the object called name inside the output location base: a
// file:// directory or an s3:// prefix (a trailing slash is optional). name
// must be a plain file name. An http(s) base is a single signed URL and is
// returned as is only when the caller has exactly one output; Join refuses
// it so that two outputs never overwrite each other.
func Join(base, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("%w: output name %q must be a plain file name", ErrInvalid, name)
	}
	u, err := Parse(base)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case SchemeFile, SchemeS3:
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + name
		return u.String(), nil
	default:
		return "", fmt.Errorf("%w: %s output location %q names one object; give a file:// directory or an s3:// prefix for outputs of several files", ErrInvalid, u.Scheme, Redact(base))
	}
}
