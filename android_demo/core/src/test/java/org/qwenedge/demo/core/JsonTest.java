package org.qwenedge.demo.core;

import java.io.StringReader;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

final class JsonTest {
  private JsonTest() {}

  static void testScalars() {
    Check.equal("a", Json.parse("\"a\""), "string");
    Check.equal(0L, Json.parse("0"), "zero");
    Check.equal(-12L, Json.parse(" -12 "), "negative integer with spaces");
    Check.equal(1.5, Json.parse("1.5"), "fraction");
    Check.equal(-2.5e-3, Json.parse("-2.5E-3"), "exponent");
    Check.equal(1e2, Json.parse("1e+2"), "exponent without fraction is a double");
    Check.equal(true, Json.parse("true"), "true");
    Check.equal(false, Json.parse("false"), "false");
    Check.equal(null, Json.parse("null"), "null");
  }

  static void testIntegersBeyondLongBecomeDoubles() {
    Check.equal(Long.MAX_VALUE, Json.parse("9223372036854775807"), "largest long");
    Check.equal(9.223372036854775808e18, Json.parse("9223372036854775808"), "one past it");
  }

  static void testEscapes() {
    Check.equal("q\"b\\s/\b\f\n\r\t", Json.parse("\"q\\\"b\\\\s\\/\\b\\f\\n\\r\\t\""), "simple escapes");
    Check.equal("\u00e9\u4e2d", Json.parse("\"\\u00e9\\u4E2D\""), "unicode escapes, either case");
    Check.equal("\uD83D\uDE00", Json.parse("\"\\ud83d\\ude00\""), "a surrogate pair is one emoji");
    Check.equal("\u0120hello \u4e2d\uD83D\uDE00", Json.parse("\"\u0120hello \u4e2d\uD83D\uDE00\""), "raw non-ASCII");
  }

  static void testContainersKeepOrder() {
    Object value = Json.parse("{\"b\": [1, {\"c\": null}, []], \"a\": {}}");
    Map<String, Object> expected = new LinkedHashMap<>();
    Map<String, Object> inner = new LinkedHashMap<>();
    inner.put("c", null);
    expected.put("b", Arrays.asList(1L, inner, Arrays.asList()));
    expected.put("a", new LinkedHashMap<>());
    Check.equal(expected, value, "nested containers");
    Check.equal(Arrays.asList("b", "a"), Arrays.asList(((Map<?, ?>) value).keySet().toArray()), "key order");
  }

  static void testWriteRoundTrips() {
    String text = "{\"s\":\"a\\\"b\\\\c\\n\\u0001\u00e9\",\"n\":[1,-2,0.5,true,false,null],\"o\":{}}";
    Check.equal(text, Json.write(Json.parse(text)), "write(parse(text))");
  }

  static void testMalformedInputIsRefusedWithAPlace() {
    String[][] cases = {
        {"", "expected a value"},
        {"[1,]", "expected a value"},
        {"{\"a\":1,}", "expected a quoted name"},
        {"[1 2]", "expected ',' or ']'"},
        {"{\"a\" 1}", "expected ':'"},
        {"{'a': 1}", "expected a quoted name or '}'"},
        {"01", "expected the end of the document"},
        {"1.", "expected a digit"},
        {"-", "expected a digit"},
        {"\"abc", "unterminated string"},
        {"\"a\nb\"", "control character"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\u12g4\"", "invalid \\u escape"},
        {"tru", "invalid literal"},
        {"nul", "invalid literal"},
        {"[1] [2]", "expected the end of the document"},
        {"{\"a\":1,\"a\":2}", "duplicate key \"a\""},
        {"NaN", "expected a value"},
    };
    for (String[] c : cases) {
      JsonException e = Check.raises(JsonException.class, () -> Json.parse(c[0]), c[1]);
      Check.isTrue(e.getMessage().contains("line "), "no position in: " + e.getMessage());
    }
  }

  static void testErrorsGiveLineAndColumn() {
    Check.raises(JsonException.class, () -> Json.parse("{\n  \"a\": [1,\n  ]\n}"), "line 3, column 3");
  }

  static void testDeepNestingIsRefused() {
    StringBuilder deep = new StringBuilder();
    for (int i = 0; i < 600; i++) deep.append('[');
    Check.raises(JsonException.class, () -> Json.parse(deep.toString()), "nesting deeper than 512");
  }

  static void testStreamingSkipsWhatItDoesNotNeed() {
    JsonReader reader = new JsonReader(new StringReader("{\"skip\": {\"x\": [1, {\"y\": \"]}\"}]}, \"keep\": 7}"));
    reader.beginObject();
    Check.equal("skip", reader.nextName(), "first name");
    reader.skipValue();
    Check.equal("keep", reader.nextName(), "second name");
    Check.equal(7L, reader.nextNumber(), "kept value");
    Check.isTrue(!reader.hasNext(), "object ends");
    reader.endObject();
    Check.equal(JsonReader.Kind.END_DOCUMENT, reader.peek(), "document ends");
  }

  static void testReaderRefusesTheWrongCall() {
    JsonReader reader = new JsonReader(new StringReader("[\"a\"]"));
    reader.beginArray();
    Check.raises(JsonException.class, reader::nextNumber, "expected NUMBER but found STRING");
  }

  static void testLargeInputStreams() {
    StringBuilder big = new StringBuilder("[");
    for (int i = 0; i < 20000; i++) big.append(i == 0 ? "" : ",").append("\"tok").append(i).append('"');
    big.append(']');
    List<?> items = (List<?>) Json.parse(big.toString());
    Check.equal(20000, items.size(), "items across many buffer refills");
    Check.equal("tok19999", items.get(19999), "last item");
  }
}
