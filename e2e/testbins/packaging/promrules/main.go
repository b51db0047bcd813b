// Command promrules checks the rule groups of PrometheusRule objects the way Prometheus
// loads them — github.com/prometheus/prometheus/model/rulefmt, the validation behind
// `promtool check rules`: YAML fields, PromQL, `for` durations, label names and the
// annotation templates — and prints every rule as JSON with the metric names its
// expression selects, so that a test can hold those names to what our binaries export.
//
//	promrules FILE...
//
// FILE is multi-document YAML (a rendered manifest stream); objects other than
// PrometheusRule are skipped. Exit status: 0 every rule is valid; 1 a rule is invalid
// (each problem on stderr, naming the object and group); 2 unusable input.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// rule is one checked rule, as printed.
type rule struct {
	Object      string            `json:"object"`
	Group       string            `json:"group"`
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Metrics     []string          `json:"metrics"`
}

// object is the part of a Kubernetes object we read.
type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: promrules FILE...")
		os.Exit(2)
	}
	// Legacy (ASCII) names: what every Prometheus version accepts unquoted.
	p := parser.NewParser(parser.Options{})
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rules := []rule{}
	invalid := false
	for _, file := range os.Args[1:] {
		objs, err := readObjects(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			os.Exit(2)
		}
		for _, obj := range objs {
			found, errs := check(obj, p, logger)
			for _, e := range errs {
				fmt.Fprintf(os.Stderr, "%s: PrometheusRule %s/%s: %v\n", file, obj.Metadata.Namespace, obj.Metadata.Name, e)
				invalid = true
			}
			rules = append(rules, found...)
		}
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(rules); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if invalid {
		os.Exit(1)
	}
}

// readObjects returns the PrometheusRule objects of a multi-document YAML file.
func readObjects(file string) ([]object, error) {
	content, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var objs []object
	dec := yaml.NewDecoder(bytes.NewReader(content))
	for {
		var obj object
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(objs)+1, err)
		}
		if obj.Kind == "PrometheusRule" {
			objs = append(objs, obj)
		}
	}
}

// check validates the object's spec as a rules file (spec has the shape of one: groups)
// and lists its rules with the metrics each selects.
func check(obj object, p parser.Parser, logger *slog.Logger) ([]rule, []error) {
	spec, err := yaml.Marshal(&obj.Spec)
	if err != nil {
		return nil, []error{err}
	}
	groups, errs := rulefmt.Parse(spec, false, model.LegacyValidation, p, logger)
	if len(errs) > 0 {
		return nil, errs
	}
	if len(groups.Groups) == 0 {
		return nil, []error{errors.New("no rule groups")}
	}
	name := obj.Metadata.Namespace + "/" + obj.Metadata.Name
	var rules []rule
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			expr, err := p.ParseExpr(r.Expr)
			if err != nil { // rulefmt parsed it already; kept for the AST
				return nil, []error{fmt.Errorf("group %s: %w", g.Name, err)}
			}
			out := rule{
				Object: name, Group: g.Name, Alert: r.Alert, Record: r.Record,
				Expr: r.Expr, Labels: r.Labels, Annotations: r.Annotations,
				Metrics: metricNames(expr),
			}
			if r.For != 0 {
				out.For = r.For.String()
			}
			rules = append(rules, out)
		}
	}
	return rules, nil
}

// metricNames lists, sorted and once each, the metric names the expression selects.
func metricNames(expr parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok && vs.Name != "" {
			seen[vs.Name] = true
		}
		return nil
	})
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
