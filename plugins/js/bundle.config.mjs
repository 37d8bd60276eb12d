// The bundle configuration of a legsync plugin (`jco componentize --bundle
// --bundle-config plugins/js/bundle.config.mjs`): the contract's own
// interfaces (`legsync:policy/...`) are the component's imports, resolved by
// the host, not modules to bundle. Without this, every build warns that it
// cannot resolve them (UNRESOLVED_IMPORT), a line that reads like an error.
export default {
  external: [/^legsync:/],
};
