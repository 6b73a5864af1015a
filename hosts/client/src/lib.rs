//! RELA client library: async (tokio) with a blocking wrapper
