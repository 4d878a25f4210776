package org.qwenedge.demo.core;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Every name the app reads from a bundle, in one place: files, manifest and self-check fields, and
 * the program's methods. The core reads bundles through these constants only, and
 * {@code tests/android_demo/test_contract.py} checks {@link #describe()} against a bundle written by
 * the exporter, so renaming a field on either side fails a test.
 */
public final class Contract {
  private Contract() {}

  // Files and versions.
  public static final String MANIFEST_FILE = "manifest.json";
  public static final String TOKENIZER_FILE = "tokenizer.json";
  public static final String PTE_FORMAT = "pte";
  public static final int MANIFEST_SCHEMA = 1;
  public static final int SELFCHECK_SCHEMA = 1;

  // manifest.json, top level.
  public static final String SCHEMA_VERSION = "schema_version";
  public static final String SOURCE = "source";
  public static final String EXPORT = "export";
  public static final String TOKENIZER = "tokenizer";
  public static final String ARTIFACTS = "artifacts";
  public static final String SELFCHECK = "selfcheck";
  // manifest.json: source, export, artifacts[i], file entries, tokenizer.
  public static final String NAME = "name";
  public static final String MAX_SEQ_LEN = "max_seq_len";
  public static final String FORMAT = "format";
  public static final String FILES = "files";
  public static final String QUANT = "quant";
  public static final String PATH = "path";
  public static final String SHA256 = "sha256";
  public static final String SIZE_BYTES = "size_bytes";
  public static final String CHAT_TEMPLATE = "chat_template";
  public static final String EOS_TOKEN_IDS = "eos_token_ids";
  public static final String SPECIAL_TOKENS = "special_tokens";

  // selfcheck.json (also SCHEMA_VERSION and EOS_TOKEN_IDS).
  public static final String PROMPT_TEXT = "prompt_text";
  public static final String PROMPT_IDS = "prompt_ids";
  public static final String EXPECTED_IDS = "expected_ids";
  public static final String MAX_NEW_TOKENS = "max_new_tokens";
  public static final String SAMPLING = "sampling";
  public static final String TOLERANCE = "tolerance";
  public static final String MIN_MATCHING_PREFIX = "min_matching_prefix";
  public static final String GREEDY = "greedy";

  // model.pte: the method ExecuTorch's LLM runner calls, and the constant methods it reads.
  public static final String FORWARD_METHOD = "forward";
  public static final List<String> RUNNER_METADATA_METHODS = Arrays.asList(
      "get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_bos_id", "get_eos_ids",
      "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape");
  /** The constant method whose value must equal the manifest's export.max_seq_len (the chat's context). */
  public static final String CONTEXT_METHOD = "get_max_context_len";

  /** What the app reads, where: the contract test's side of the comparison. */
  public static Map<String, Object> describe() {
    Map<String, Object> fields = new LinkedHashMap<>();
    fields.put("manifest", Arrays.asList(SCHEMA_VERSION, SOURCE, EXPORT, TOKENIZER, ARTIFACTS, SELFCHECK));
    fields.put("manifest.source", Arrays.asList(NAME));
    fields.put("manifest.export", Arrays.asList(MAX_SEQ_LEN));
    fields.put("manifest.tokenizer", Arrays.asList(FILES, CHAT_TEMPLATE, EOS_TOKEN_IDS, SPECIAL_TOKENS));
    fields.put("manifest.artifacts[]", Arrays.asList(FORMAT, FILES, QUANT));
    fields.put("file_entry", Arrays.asList(PATH, SHA256, SIZE_BYTES));
    fields.put("selfcheck", Arrays.asList(SCHEMA_VERSION, PROMPT_TEXT, PROMPT_IDS, EXPECTED_IDS, EOS_TOKEN_IDS,
        MAX_NEW_TOKENS, SAMPLING, TOLERANCE));
    fields.put("selfcheck.tolerance", Arrays.asList(MIN_MATCHING_PREFIX));

    Map<String, Object> values = new LinkedHashMap<>();
    values.put("manifest_file", MANIFEST_FILE);
    values.put("tokenizer_file", TOKENIZER_FILE);
    values.put("pte_format", PTE_FORMAT);
    values.put("manifest_schema", (long) MANIFEST_SCHEMA);
    values.put("selfcheck_schema", (long) SELFCHECK_SCHEMA);
    values.put("selfcheck_sampling", GREEDY);

    Map<String, Object> program = new LinkedHashMap<>();
    program.put("methods", Arrays.asList(FORWARD_METHOD));
    program.put("metadata_methods", RUNNER_METADATA_METHODS);
    program.put("context_method", CONTEXT_METHOD);

    Map<String, Object> all = new LinkedHashMap<>();
    all.put("fields", fields);
    all.put("values", values);
    all.put("program", program);
    return all;
  }

  /** Prints {@link #describe()} as JSON, for the contract test. */
  public static void main(String[] args) {
    System.out.println(Json.write(describe()));
  }
}
