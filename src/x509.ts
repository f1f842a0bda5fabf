// @peculiar/x509 needs the reflect-metadata polyfill loaded before it; import X.509 through this module.
import "reflect-metadata";
export * from "@peculiar/x509";
