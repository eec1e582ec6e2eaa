package event

import (
	"bytes"

	"github.com/ccatobs/ccat-staging/shared/event/internal/check"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// CheckData runs only the compiled check of typ (false when it has none).
func CheckData(typ string, raw []byte) (bool, error) {
	return check.Data(typ, raw)
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
	return check.Compile(doc)
}
