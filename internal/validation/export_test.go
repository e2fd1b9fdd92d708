package validation

// CloseInheritedFiles is what the child does first, for the environment test.
var CloseInheritedFiles = closeInheritedFiles
