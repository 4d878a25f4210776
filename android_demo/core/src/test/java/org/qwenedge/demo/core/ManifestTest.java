package org.qwenedge.demo.core;

import java.io.File;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

final class ManifestTest {
  private ManifestTest() {}

  static void testReadsWhatTheAppNeeds() throws Exception {
    Manifest m = Manifest.load(Fixtures.bundle(Fixtures.tempDir("manifest")));
    Check.equal("tiny-code", m.sourceName, "source name");
    Check.equal("8w", m.quant, "quant of the pte artifact, not the onnx one");
    Check.equal(Arrays.asList("model.pte", "model.ptd"), paths(m.programFiles), "program first, then weights");
    Check.equal(256, m.contextLength, "context length");
    Check.equal(Fixtures.TEMPLATE, m.chatTemplate, "chat template");
    Check.equal(Arrays.asList(20), m.eosTokenIds, "eos ids");
    Check.equal(21, m.specialTokens.get("<|im_start|>"), "special token id");
    Check.equal("tokenizer.json", m.tokenizerJson().path, "tokenizer entry");
    Check.equal("selfcheck.json", m.selfcheck.path, "selfcheck entry");
    Check.equal(Arrays.asList("model.pte", "model.ptd", "tokenizer.json", "selfcheck.json"),
        paths(m.filesToVerify()), "files to verify");
  }

  static void testSchemaVersionsSayWhichSideToUpdate() throws Exception {
    Map<String, Object> json = manifest();
    json.put("schema_version", 2L);
    Check.raises(BundleException.class, () -> Manifest.parse(json), "schema_version 2, this app reads 1", "update the app");
    json.put("schema_version", 0L);
    Check.raises(BundleException.class, () -> Manifest.parse(json), "re-export the bundle");
    json.put("schema_version", "1");
    Check.raises(BundleException.class, () -> Manifest.parse(json), "schema_version is missing or not an integer");
  }

  @SuppressWarnings("unchecked")
  static void testMissingFieldsAreNamedWithTheirPath() throws Exception {
    Map<String, Object> json = manifest();
    entry(json, 1, 0).remove("sha256");
    Check.raises(BundleException.class, () -> Manifest.parse(json),
        "manifest.json: artifacts[1].files[0].sha256 is missing or not a string", "re-export");
    Map<String, Object> noExport = manifest();
    noExport.remove("export");
    Check.raises(BundleException.class, () -> Manifest.parse(noExport), "manifest.json: export is missing or not a JSON object");
    Map<String, Object> badTokens = manifest();
    ((Map<String, Object>) badTokens.get("tokenizer")).put("eos_token_ids", "20");
    Check.raises(BundleException.class, () -> Manifest.parse(badTokens), "tokenizer.eos_token_ids is missing or not a JSON array");
  }

  static void testChecksumsMustBeSha256Hex() throws Exception {
    Map<String, Object> json = manifest();
    entry(json, 1, 1).put("sha256", "ABC");
    Check.raises(BundleException.class, () -> Manifest.parse(json), "files[1].sha256 is not 64 lowercase hex digits");
    Map<String, Object> negative = manifest();
    entry(negative, 1, 1).put("size_bytes", -1L);
    Check.raises(BundleException.class, () -> Manifest.parse(negative), "size_bytes is negative");
  }

  static void testPathsMustStayInsideTheBundle() throws Exception {
    for (String path : new String[] {"../model.pte", "a/../../b", "/etc/passwd", "C:/x", "a\\b", ""}) {
      Map<String, Object> json = manifest();
      entry(json, 1, 0).put("path", path);
      Check.raises(BundleException.class, () -> Manifest.parse(json), "stay inside the bundle");
    }
    Check.equal(null, Manifest.unsafePath("sub/dir/model..pte"), "dots inside a name are fine");
  }

  static void testABundleWithoutPteSaysHowToExportOne() throws Exception {
    Map<String, Object> json = manifest();
    ((List<?>) json.get("artifacts")).remove(1);
    Check.raises(BundleException.class, () -> Manifest.parse(json), "no \"pte\" artifact (the bundle has: onnx)",
        "--format pte");
  }

  @SuppressWarnings("unchecked")
  static void testABundleWithoutTokenizerParsesButCannotChat() throws Exception {
    Map<String, Object> json = manifest();
    Map<String, Object> tokenizer = (Map<String, Object>) json.get("tokenizer");
    tokenizer.put("files", Arrays.asList());
    tokenizer.put("chat_template", null);
    Manifest m = Manifest.parse(json);
    Check.equal(null, m.chatTemplate, "no template");
    Check.raises(BundleException.class, m::tokenizerJson, "has no tokenizer.json", "checkpoint directory");
  }

  static void testMissingManifestSaysWhereToCopyABundle() throws Exception {
    File dir = Fixtures.tempDir("empty");
    Check.raises(BundleException.class, () -> Manifest.load(dir), "manifest.json not found", "qwen-edge export");
    Fixtures.write(new File(dir, "manifest.json"), "{\"schema_version\": 1,");
    Check.raises(BundleException.class, () -> Manifest.load(dir), "not valid JSON", "line 1");
  }

  @SuppressWarnings("unchecked")
  static Map<String, Object> entry(Map<String, Object> manifest, int artifact, int file) {
    Map<String, Object> a = (Map<String, Object>) ((List<?>) manifest.get("artifacts")).get(artifact);
    return (Map<String, Object>) ((List<?>) a.get("files")).get(file);
  }

  private static Map<String, Object> manifest() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("json"));
    return Fixtures.copy(Fixtures.manifest(dir));
  }

  private static List<String> paths(List<Manifest.FileEntry> entries) {
    String[] out = new String[entries.size()];
    for (int i = 0; i < out.length; i++) out[i] = entries.get(i).path;
    return Arrays.asList(out);
  }
}
