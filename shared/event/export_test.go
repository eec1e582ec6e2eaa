package event

import (
	"bytes"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// CheckData runs only the compiled check of typ (false when it has none).
func CheckData(typ string, raw []byte) (bool, error) {
	c := checks()[typ]
	if c == nil {
		return false, nil
	}
	return true, c.validate(raw)
}

// ReferenceData runs only the general validator.
func ReferenceData(typ string, raw []byte) error {
	m, err := compiled()
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	return m[typ].Validate(inst)
}

// CompileCheck compiles one schema document into a check.
func CompileCheck(doc []byte) error {
	_, err := compileCheck(doc)
	return err
}
