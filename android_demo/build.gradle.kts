// Versions: AGP 8.9 needs Gradle 8.11.1+ (gradle/wrapper/gradle-wrapper.properties); Kotlin 2.2 reads
// the metadata of the Kotlin-built ExecuTorch AAR.
plugins {
    id("com.android.application") version "8.9.1" apply false
    id("org.jetbrains.kotlin.android") version "2.2.0" apply false
}
